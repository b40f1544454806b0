// A strict, certified OpenID Connect provider for the flow8 host's tests:
// node-oidc-provider (npm `oidc-provider`) with
// - PKCE required for every client (PKCE_REQUIRED=0 turns that off);
// - refresh-token rotation on: a spent refresh token gets `invalid_grant`;
// - RFC 7009 revocation on;
// - `offline_access` dropped unless the authorize request says `prompt=consent`, and so
//   no refresh token (OIDC Core §11; the library's own rule, left as it is);
// - one confidential test client (CLIENT_ID, CLIENT_SECRET, REDIRECT_URI), which
//   authenticates with `client_secret_post`;
// - access tokens living ACCESS_TTL seconds (default 3600).
// Its login and consent are pages a person would see. This script answers them itself:
// the login signs in ACCOUNT (default `oidc-user-1`) and the consent grants what was
// asked (CONSENT=deny refuses instead), so a test's HTTP client that keeps cookies and
// follows the provider's redirects reaches the client's redirect URI without a browser.
// Token grants, refresh tokens issued, revoked grants and authorization errors are printed
// as JSON lines on stdout so tests can count them. Prints `ready <issuer>` when
// listening. Usage: node server.mjs PORT
import Provider from 'oidc-provider';
import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';

const port = Number(process.argv[2] ?? 0);
const env = (name, fallback) => process.env[name] ?? fallback;
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n');

const account = env('ACCOUNT', 'oidc-user-1');
const email = `${account}@example.test`;
const consent = env('CONSENT', 'grant');

// A signing key of our own (the library's built-in one is for development only).
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'RS256', use: 'sig', kid: 'test-1' };

// The issuer names the port, so listen first and build the provider after.
let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
const http = createServer((req, res) => handler(req, res));
await new Promise((resolve) => http.listen(port, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${http.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: env('CLIENT_ID', 'flow8-oidc-client'),
      client_secret: env('CLIENT_SECRET', 'flow8-oidc-secret'),
      redirect_uris: env('REDIRECT_URI', 'http://127.0.0.1:1/auth/callback').split(','),
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_post',
    },
  ],
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  pkce: { required: () => env('PKCE_REQUIRED', '1') !== '0' },
  rotateRefreshToken: true,
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    userinfo: { enabled: true },
  },
  scopes: ['openid', 'offline_access', 'email', 'contacts.read'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  ttl: {
    AccessToken: Number(env('ACCESS_TTL', 3600)),
    AuthorizationCode: 600,
    RefreshToken: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
    Session: 3600,
    Interaction: 600,
    IdToken: 3600,
  },
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, email, email_verified: true };
      },
    };
  },
});

provider.on('grant.success', (ctx) => {
  emit({ event: 'token', grant_type: ctx.oidc.params.grant_type, outcome: 'ok' });
});
provider.on('grant.error', (ctx, err) => {
  emit({ event: 'token', grant_type: ctx.oidc.params?.grant_type ?? null, outcome: err.error ?? 'error' });
});
// Opaque tokens are their own id.
provider.on('refresh_token.saved', (token) => emit({ event: 'refresh_token_issued', token: token.jti }));
// A revoked refresh token revokes its whole grant (and every token of it).
provider.on('grant.revoked', (_ctx, grantId) => emit({ event: 'revoke', outcome: 'ok', grant: grantId }));
provider.on('revocation.error', (_ctx, err) => emit({ event: 'revoke', outcome: err.error ?? 'error' }));
provider.on('authorization.error', (_ctx, err) => {
  emit({ event: 'authorization_error', error: err.error, error_description: err.error_description });
});

// The login and consent pages, answered at once: GET /interaction/<uid>.
async function interaction(req, res) {
  try {
    const { prompt, params, session, grantId } = await provider.interactionDetails(req, res);
    if (consent === 'deny') {
      await provider.interactionFinished(
        req,
        res,
        { error: 'access_denied', error_description: 'the user refused' },
        { mergeWithLastSubmission: false },
      );
      return;
    }
    if (prompt.name === 'login') {
      await provider.interactionFinished(req, res, { login: { accountId: account } }, { mergeWithLastSubmission: false });
      return;
    }
    // consent: grant every scope and claim the prompt says is missing.
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const { details } = prompt;
    if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
    if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(details.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
  } catch (err) {
    res.statusCode = 400;
    res.setHeader('content-type', 'text/plain');
    res.end(`interaction failed: ${err.message}`);
  }
}

const callback = provider.callback();
handler = (req, res) => {
  if (req.method === 'GET' && req.url.startsWith('/interaction/')) {
    interaction(req, res);
    return;
  }
  callback(req, res);
};
process.stdout.write(`ready ${issuer}\n`);
