// A flow8 module in JavaScript: POST the step's `body` (JSON) to `url` with standard
// `fetch` (wasi:http), asking the host to attach the credential bound as `api` by naming
// it in the `flow8-credential` header. The host removes that header and adds the
// credential itself (e.g. `Authorization: Bearer ...`): the secret never enters this
// module, and the request may only go to that credential's own hosts.
import { write as log } from 'flow8:integration/log@0.1.0';

export function manifest() {
  return JSON.stringify({
    manifest_version: 1,
    name: 'js-fetch',
    version: '0.1.0',
    description: 'POST JSON to an API with fetch; the host attaches the bound credential.',
    input_schema: {
      type: 'object',
      required: ['url'],
      properties: {
        url: { type: 'string' },
        method: { type: 'string' },
        body: {},
        attach: { type: 'boolean' },
      },
    },
    credentials: [{ name: 'api', kind: 'component', service: 'http', required: false }],
    // No hosts of its own: a request carrying the credential may go to that
    // credential's hosts, and nowhere else.
    allowed_hosts: [],
  });
}

// An `error` of the flow8 world, as the host reports it (jco's convention: the
// thrown value's `payload` is the `err` case).
function fail(tag, message) {
  const e = new Error(message);
  e.payload = { tag, val: message };
  return e;
}

export async function execute(inputText) {
  const input = JSON.parse(inputText);
  const headers = { 'content-type': 'application/json' };
  if (input.attach !== false) headers['flow8-credential'] = 'api';
  let response;
  try {
    response = await fetch(input.url, {
      method: input.method ?? 'POST',
      headers,
      body: input.body === undefined ? undefined : JSON.stringify(input.body),
    });
  } catch (e) {
    // The host logs why it refused; fetch only sees the wasi:http error code.
    throw fail('forbidden', `fetch ${input.url} failed: ${e}`);
  }
  const text = await response.text();
  log('info', `${response.status} from ${input.url}`);
  if (response.status >= 400) {
    throw fail('invalid-input', `${input.url} answered ${response.status}: ${text.slice(0, 200)}`);
  }
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return JSON.stringify({ status: response.status, body });
}
