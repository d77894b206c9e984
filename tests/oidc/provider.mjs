// The OpenID Connect provider the console's sign-in tests run against: the npm package
// `oidc-provider` (a certified implementation), configured as an operator's identity provider
// would be for the vault — one confidential client (the console), authorization code with PKCE,
// JWT access tokens (RFC 9068, `typ: at+jwt`) for the vault's audience, ES256 signatures.
//
// Started by tests/it/oidc.rs on a loopback port; prints one JSON line `{"issuer": ...}` once it
// listens. Configured by environment: OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_REDIRECT_URI,
// OIDC_AUDIENCE (the `aud` of access tokens).
//
// The login page is a plain form (any user name signs in: the vault decides what a principal
// may do, the provider only who it is); consent is given at once. One test-only control:
// `POST /_test/audience?value=X` changes the audience of access tokens issued from then on, so a
// test can make the provider issue a token for another audience.

import http from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`provider.mjs: ${name} is not set`);
    process.exit(2);
  }
  return v;
};

const clientId = env('OIDC_CLIENT_ID');
const clientSecret = env('OIDC_CLIENT_SECRET');
const redirectUri = env('OIDC_REDIRECT_URI');
let audience = env('OIDC_AUDIENCE');

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-provider-es256', alg: 'ES256', use: 'sig' };

// The test may stop reading our output: a closed pipe must not end the provider.
process.stdout.on('error', () => {});

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
const server = http.createServer((req, res) => handler(req, res));

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        redirect_uris: [redirectUri],
        grant_types: ['authorization_code'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
        id_token_signed_response_alg: 'ES256',
      },
    ],
    jwks: { keys: [signingKey] },
    findAccount: async (_ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:custodia:vault',
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'openid',
          audience,
          accessTokenFormat: 'jwt',
          accessTokenTTL: 600,
          jwt: { sign: { alg: 'ES256' } },
        }),
      },
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  });
  provider.proxy = false;

  const grantFor = async (details) => {
    const grant = new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    grant.addOIDCScope('openid');
    grant.addResourceScope('urn:custodia:vault', 'openid');
    return grant.save();
  };

  const callback = provider.callback();
  handler = async (req, res) => {
    try {
      const url = new URL(req.url, issuer);
      if (req.method === 'POST' && url.pathname === '/_test/audience') {
        audience = url.searchParams.get('value') || audience;
        res.end('ok');
        return;
      }
      const m = url.pathname.match(/^\/interaction\/([\w-]+)$/);
      if (m) {
        const details = await provider.interactionDetails(req, res);
        if (details.prompt.name === 'consent') {
          const grantId = await grantFor(details);
          await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
          return;
        }
        if (req.method === 'GET') {
          res.setHeader('content-type', 'text/html; charset=utf-8');
          res.end(`<!doctype html><title>Test identity provider</title>
<form method="post" action="/interaction/${escape(m[1])}">
<label>User <input name="login" id="login" autofocus></label>
<button type="submit" id="submit">Sign in</button></form>`);
          return;
        }
        let body = '';
        for await (const chunk of req) body += chunk;
        const login = new URLSearchParams(body).get('login') || '';
        await provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
        return;
      }
      callback(req, res);
    } catch (e) {
      res.statusCode = 500;
      res.end(String(e && e.message));
    }
  };
  console.log(JSON.stringify({ issuer }));
});
