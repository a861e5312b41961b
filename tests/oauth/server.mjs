// A real OAuth 2.0 authorization server (oauth2-mock-server) for Ferry's interop tests.
//
// Starts on 127.0.0.1 with a port the OS picks and prints its issuer URL as the first line
// of stdout; the token endpoint is `${url}/token`, the JWKS `${url}/jwks`. Then prints one
// JSON line per token request: {"event":"token","status":…,"grant":…,"client_auth":…,
// "access_token":…,"refresh_token":…}. Exits when stdin closes, so it never outlives the
// test that started it.
//
// The mock issues tokens to anyone; this launcher makes it a strict server:
//   OAUTH_CLIENT_ID / OAUTH_CLIENT_SECRET  the only client accepted (default ferry / ferry-secret)
//   OAUTH_EXPIRES_IN                       token lifetime in seconds (default 3600)
//   OAUTH_REFRESH_TOKEN                    a refresh token accepted once; each use rotates it
import { randomUUID } from 'node:crypto';
import { OAuth2Server } from 'oauth2-mock-server';

const clientId = process.env.OAUTH_CLIENT_ID ?? 'ferry';
const clientSecret = process.env.OAUTH_CLIENT_SECRET ?? 'ferry-secret';
const ttl = Number(process.env.OAUTH_EXPIRES_IN ?? 3600);
const refreshTokens = new Set(process.env.OAUTH_REFRESH_TOKEN ? [process.env.OAUTH_REFRESH_TOKEN] : []);

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');

// RFC 6749 §2.3.1: id and secret are form-encoded inside the basic header.
const formDecode = (s) => decodeURIComponent(s.replace(/\+/g, ' '));

function clientOf(req) {
  const header = req.headers.authorization ?? '';
  if (header.startsWith('Basic ')) {
    const text = Buffer.from(header.slice(6), 'base64').toString('utf8');
    const i = text.indexOf(':');
    return { method: 'basic', id: formDecode(text.slice(0, i)), secret: formDecode(text.slice(i + 1)) };
  }
  return { method: 'post', id: req.body.client_id, secret: req.body.client_secret };
}

server.service.on('beforeTokenSigning', (token, req) => {
  const now = Math.floor(Date.now() / 1000);
  token.payload.exp = now + ttl;
  // RS256 is deterministic: without a jti, two tokens issued in the same second are equal.
  token.payload.jti = randomUUID();
  token.payload.sub = clientOf(req).id;
  if (req.body.audience) token.payload.aud = req.body.audience;
});

server.service.on('beforeResponse', (response, req) => {
  const client = clientOf(req);
  const grant = req.body.grant_type;
  const fail = (status, error, description) => {
    response.statusCode = status;
    response.body = { error, error_description: description };
  };
  if (client.id !== clientId || client.secret !== clientSecret) {
    fail(401, 'invalid_client', 'client authentication failed');
  } else if (grant === 'refresh_token') {
    if (!refreshTokens.delete(req.body.refresh_token)) {
      fail(400, 'invalid_grant', 'unknown or used refresh token');
    } else {
      refreshTokens.add(response.body.refresh_token);
    }
  }
  if (response.statusCode === 200) response.body.expires_in = ttl;
  console.log(JSON.stringify({
    event: 'token',
    status: response.statusCode,
    grant,
    client_auth: client.method,
    scope: req.body.scope ?? null,
    audience: req.body.audience ?? null,
    access_token: response.body.access_token ?? null,
    refresh_token: response.body.refresh_token ?? null,
  }));
});

await server.start(0, '127.0.0.1');
// The mock names itself `localhost`, which may resolve to ::1 where nothing listens.
server.issuer.url = `http://127.0.0.1:${server.address().port}`;
console.log(server.issuer.url);

process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
process.stdin.resume();
