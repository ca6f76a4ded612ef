// A real OpenID provider for the sign-in tests: the npm package
// `oidc-provider`, configured like Google (RS256 keys; `email`,
// `email_verified`, `name` and `hd` in the ID token), with one confidential
// client whose redirect URI is given exactly.
//
// Tests steer it over a small control API on the same port:
//   POST /test/next   {"sub","email","email_verified","name","hd"}  who signs in next
//   POST /test/mode   {"mode": "..."}  rewrite the next ID tokens (hostile provider)
//   POST /test/jwks   {"up": false}    the JWKS endpoint answers 503
// The sign-in page itself is automatic: an interaction logs in the account
// set by /test/next and consents.
//
// Env: PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI. Prints "ready <issuer>".

import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const clientId = process.env.CLIENT_ID;
const clientSecret = process.env.CLIENT_SECRET;
const redirectUri = process.env.REDIRECT_URI;

const kid = 'test-rs256-1';
const { publicKey, privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const privateJwk = { ...(await jose.exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' };
const publicPem = await jose.exportSPKI(publicKey);

let next = { sub: 'google-sub-1', email: 'ann@example.com', email_verified: true, name: 'Ann', hd: 'example.com' };
let mode = 'none';
let jwksUp = true;

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [privateJwk] },
  claims: { openid: ['sub', 'hd'], email: ['email', 'email_verified'], profile: ['name'] },
  // Like Google: the scope's claims are in the ID token itself.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  async findAccount(ctx, sub) {
    const who = { ...next };
    return { accountId: sub, claims: async () => ({ ...who, sub }) };
  },
});
provider.proxy = false;

// Hostile provider: rewrite the ID token of token responses.
provider.use(async (ctx, nextMw) => {
  if (ctx.path === '/jwks' && !jwksUp) {
    ctx.status = 503;
    ctx.body = 'jwks down';
    return;
  }
  await nextMw();
  if (ctx.path === '/token' && mode !== 'none' && ctx.body && ctx.body.id_token) {
    ctx.body = { ...ctx.body, id_token: await rewrite(ctx.body.id_token) };
  }
});

const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');

async function rewrite(token) {
  const [h, p, s] = token.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  const claims = JSON.parse(Buffer.from(p, 'base64url'));
  const now = Math.floor(Date.now() / 1000);
  const sign = async (c, key = privateKey, k = kid) =>
    new jose.SignJWT(c).setProtectedHeader({ alg: 'RS256', kid: k, typ: 'JWT' }).sign(key);
  switch (mode) {
    case 'wrong_aud': return sign({ ...claims, aud: 'some-other-client' });
    case 'multi_aud_wrong_azp': return sign({ ...claims, aud: [clientId, 'other'], azp: 'other' });
    case 'wrong_iss': return sign({ ...claims, iss: 'http://evil.example' });
    case 'expired': return sign({ ...claims, iat: now - 7200, exp: now - 3600 });
    case 'wrong_nonce': return sign({ ...claims, nonce: 'not-the-nonce' });
    case 'tampered': return `${h}.${b64({ ...claims, email: 'admin@example.com' })}.${s}`;
    case 'alg_none': return `${b64({ alg: 'none', typ: 'JWT' })}.${p}.`;
    case 'hs256_pubkey': {
      const secret = new TextEncoder().encode(publicPem);
      return new jose.SignJWT(claims).setProtectedHeader({ alg: 'HS256', kid, typ: 'JWT' }).sign(secret);
    }
    case 'unknown_kid': {
      const other = await jose.generateKeyPair('RS256');
      return sign(claims, other.privateKey, 'unknown-kid');
    }
    default: return token;
  }
}

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : {};
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  try {
    const path = new URL(req.url, issuer).pathname;
    if (req.method === 'POST' && path === '/test/next') {
      next = await readJson(req);
      res.writeHead(204).end();
      return;
    }
    if (req.method === 'POST' && path === '/test/mode') {
      mode = (await readJson(req)).mode;
      res.writeHead(204).end();
      return;
    }
    if (req.method === 'POST' && path === '/test/jwks') {
      jwksUp = (await readJson(req)).up;
      res.writeHead(204).end();
      return;
    }
    if (path.startsWith('/interaction/')) {
      const details = await provider.interactionDetails(req, res);
      if (details.prompt.name === 'login') {
        await provider.interactionFinished(req, res, { login: { accountId: next.sub } }, { mergeWithLastSubmission: false });
      } else {
        const grant = new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
        grant.addOIDCScope(details.params.scope);
        const grantId = await grant.save();
        await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
      }
      return;
    }
    callback(req, res);
  } catch (e) {
    res.writeHead(500).end(String(e));
  }
});
server.listen(port, '127.0.0.1', () => console.log(`ready ${issuer}`));
