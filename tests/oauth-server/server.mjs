// A real OAuth2 authorization server for the flow8 host's tests: oauth2-mock-server
// (authorize with PKCE, token with code and refresh grants, RFC 7009 revoke, userinfo),
// plus the behaviour real providers have and tests need:
// - refresh tokens rotate: a spent refresh token gets `invalid_grant` (RFC 6749 §10.4);
// - a revoked token gets `invalid_grant`;
// - access tokens live TOKEN_TTL seconds (default 3600);
// - REFRESH_DELAY_MS holds back each successful refresh answer after the refresh token
//   is spent (and after its event is printed), so a test can fail the client's store
//   between the provider's answer and the client's write;
// - REFRESH_HOLD=gate holds back each successful refresh answer the same way until the
//   test calls `POST /flow8-test/release-refreshes` (then answers them all, and holds
//   no later one), so a test can prove a client did not wait for the answer without
//   timing it.
// Every token request and revocation is printed as a JSON line on stdout (with the tokens
// issued), so tests can count them and know which token a client holds.
// Prints `ready <issuer-url>` when listening. Usage: node server.mjs PORT
import { OAuth2Server } from 'oauth2-mock-server';
import { createServer } from 'node:http';
import { randomUUID } from 'node:crypto';

const port = Number(process.argv[2] ?? 0);
// TOKEN_TTL: seconds every access token lives (default 3600). TTL_SEQUENCE: comma-
// separated lifetimes for the first tokens issued, then TOKEN_TTL (e.g. "20" makes
// the first token nearly expired and later ones long-lived).
const ttl = Number(process.env.TOKEN_TTL ?? 3600);
const sequence = (process.env.TTL_SEQUENCE ?? '').split(',').filter((s) => s !== '').map(Number);
const nextTtl = () => (sequence.length > 0 ? sequence.shift() : ttl);
const refreshDelay = Number(process.env.REFRESH_DELAY_MS ?? 0);
let gated = process.env.REFRESH_HOLD === 'gate';
const held = [];

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');

// Granted scopes travel with the code and then the refresh tokens, as a real server's do.
const scopeByCode = new Map();
const scopeByRefresh = new Map();
server.service.on('beforeAuthorizeRedirect', (redirect, req) => {
  const requested = new URL(req.url, 'http://x').searchParams.get('scope') ?? '';
  const code = redirect.url.searchParams.get('code');
  if (code) scopeByCode.set(code, requested);
});

const spent = new Set();
const revoked = new Set();
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n');

server.service.on('beforeTokenSigning', (token, req) => {
  token.payload.exp = Math.floor(Date.now() / 1000) + ttl;
  // The granted scopes in the token itself, as Microsoft's access tokens carry their
  // delegated permissions in `scp` (space-separated): an API fake checks them there.
  const body = req?.body ?? {};
  const granted =
    body.grant_type === 'authorization_code'
      ? scopeByCode.get(body.code)
      : body.grant_type === 'refresh_token'
        ? scopeByRefresh.get(body.refresh_token)
        : undefined;
  if (granted !== undefined) token.payload.scp = granted;
  // The same scopes as `scope` too (the mock writes `dummy`), so a fake can check them
  // the way a provider's tokeninfo would.
  if (granted !== undefined) token.payload.scope = granted;
  // Every token unique, as a real provider's are (the mock would sign identical claims
  // within one second identically), so a test can tell a refreshed token from the old.
  token.payload.jti = randomUUID();
});

server.service.on('beforeResponse', (response, req) => {
  const body = req.body ?? {};
  const grant = body.grant_type;
  if (grant === 'refresh_token') {
    const rt = body.refresh_token;
    if (spent.has(rt) || revoked.has(rt)) {
      response.statusCode = 400;
      response.body = { error: 'invalid_grant', error_description: 'refresh token is spent or revoked' };
      emit({ event: 'token', grant_type: grant, outcome: 'invalid_grant' });
      return;
    }
    spent.add(rt);
  }
  if (response.body && typeof response.body === 'object') {
    // The lifetime the client is told (per token response, from TTL_SEQUENCE first).
    response.body.expires_in = nextTtl();
    const granted =
      grant === 'authorization_code' ? scopeByCode.get(body.code) : scopeByRefresh.get(body.refresh_token);
    if (granted !== undefined) {
      response.body.scope = granted;
      if (response.body.refresh_token) scopeByRefresh.set(response.body.refresh_token, granted);
    }
  }
  emit({
    event: 'token',
    grant_type: grant,
    outcome: 'ok',
    refresh_token: response.body?.refresh_token ?? null,
    access_token: response.body?.access_token ?? null,
  });
  if (grant === 'refresh_token' && (refreshDelay > 0 || gated)) req.flow8HoldBack = true;
});

// The mock parses only JSON bodies on /revoke; RFC 7009 clients send a form, so read
// the raw body here (the answer does not wait for it, so tests poll for the event).
server.service.on('beforeRevoke', (_response, req) => {
  const record = (token) => {
    if (token) revoked.add(token);
    emit({ event: 'revoke', token: token ?? null });
  };
  if (req.body && req.body.token) {
    record(req.body.token);
    return;
  }
  let raw = '';
  let done = false;
  const finish = () => {
    if (!done) {
      done = true;
      record(new URLSearchParams(raw).get('token'));
    }
  };
  req.setEncoding('utf8');
  req.on('data', (chunk) => {
    raw += chunk;
  });
  // A client that exits right after the answer closes the connection before 'end'.
  req.on('end', finish);
  req.on('close', finish);
});

if (refreshDelay > 0 || gated) {
  // Serve the mock's handler from our own server, holding back marked answers.
  const handler = server.service.requestHandler;
  const http = createServer((req, res) => {
    if (req.method === 'POST' && req.url === '/flow8-test/release-refreshes') {
      gated = false;
      held.splice(0).forEach((answer) => answer());
      res.end('released');
      return;
    }
    const end = res.end.bind(res);
    res.end = (...args) => {
      if (req.flow8HoldBack && gated) {
        held.push(() => end(...args));
        return res;
      }
      if (req.flow8HoldBack) {
        setTimeout(() => end(...args), refreshDelay);
        return res;
      }
      return end(...args);
    };
    handler(req, res);
  });
  await new Promise((resolve) => http.listen(port, '127.0.0.1', resolve));
  server.issuer.url = `http://127.0.0.1:${http.address().port}`;
} else {
  await server.start(port, '127.0.0.1');
}
process.stdout.write(`ready ${server.issuer.url}\n`);
