// A real OpenID provider (the oidc-provider package) for tests/test_sso.py, on 127.0.0.1.
//   node oidc_provider.mjs CONFIG.json
// CONFIG: {"port", "issuer", "client": {client_id, client_secret, redirect_uris}, "accounts":
//   {"alice": {"email", "name", "groups": [...]}}, "wrong_audience": ["mallory"]}
// Sign-in is oidc-provider's own development login form (any password), then its consent page.
// An account listed in wrong_audience gets a genuine ID token, signed with the provider's key, whose
// audience is another client's: the relying party must refuse it. One listed in "forged" gets, as
// the token endpoint's answer, an ID token claiming to be the admin "alice" and forged one way:
// "none" unsigned, "hs256" signed with HMAC keyed by the provider's public key (PEM), "issuer"
// signed by the provider but naming another issuer (a mix-up). The discovery document lists `none`
// and HS256 among its ID token algorithms, as some providers' do.
import { readFileSync } from 'node:fs';
import { generateKeyPair, exportJWK, exportSPKI, SignJWT, decodeJwt, decodeProtectedHeader } from 'jose';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: 'test-key', alg: 'RS256', use: 'sig' };

const provider = new Provider(config.issuer, {
  clients: [{
    ...config.client,
    application_type: 'native', // loopback http redirect URIs are allowed for native clients
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [jwk] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: { openid: ['sub'], email: ['email'], profile: ['name'], groups: ['groups'] },
  conformIdTokenClaims: false, // scope claims (groups) in the ID token itself
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    // Read afresh: a test takes a user out of a group between two sign-ins.
    const account = JSON.parse(readFileSync(process.argv[2], 'utf8')).accounts[id];
    if (!account) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...account }; } };
  },
});

const b64 = (object) => Buffer.from(JSON.stringify(object)).toString('base64url');

async function forged(how, claims, header) {
  const admin = { ...claims, sub: 'alice', email: 'alice@example.com', groups: ['spend-admins'] };
  if (how === 'none') return `${b64({ alg: 'none', typ: 'JWT' })}.${b64(admin)}.`;
  if (how === 'hs256') {
    const pem = new TextEncoder().encode(await exportSPKI(publicKey));
    return new SignJWT(admin).setProtectedHeader({ alg: 'HS256', kid: header.kid }).sign(pem);
  }
  return new SignJWT({ ...admin, iss: 'https://other-provider.example' }).setProtectedHeader(header).sign(privateKey);
}

provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/.well-known/openid-configuration' && ctx.body) {
    ctx.body = { ...ctx.body, id_token_signing_alg_values_supported: [
      ...ctx.body.id_token_signing_alg_values_supported, 'HS256', 'none'] };
    return;
  }
  if (ctx.path !== '/token' || !ctx.body || !ctx.body.id_token) return;
  const claims = decodeJwt(ctx.body.id_token);
  const how = (config.forged || {})[claims.sub];
  if (how) {
    ctx.body = { ...ctx.body, id_token: await forged(how, claims, decodeProtectedHeader(ctx.body.id_token)) };
    return;
  }
  if (!(config.wrong_audience || []).includes(claims.sub)) return;
  const header = decodeProtectedHeader(ctx.body.id_token);
  ctx.body = { ...ctx.body, id_token: await new SignJWT({ ...claims, aud: 'another-client' })
    .setProtectedHeader(header).sign(privateKey) };
});

provider.listen(config.port, '127.0.0.1', () => console.log(`listening ${config.issuer}`));
