#!/usr/bin/env node
// Verify Queue access tokens with `jose`, configured from Queue's issuer URL.
//
//   npm install jose
//   node verify-token.mjs https://queue.example.com my-audience "$ACCESS_TOKEN" [...]
//
// Everything comes from the issuer: the discovery document gives the JWKS
// URL and the algorithms Queue signs with; createRemoteJWKSet fetches the
// JWKS, picks the key by the token's `kid` and refetches when it meets an
// unknown `kid` (a rotation; at most once every 30 s by default). Prints one
// JSON line of claims per token; exits 1 at the first token that does not verify.
import { createRemoteJWKSet, jwtVerify, errors } from 'jose';

// Queue signs with EdDSA, ES256 or RS256. Accept no other algorithm,
// whatever the discovery document or a token's header says.
const ALLOWED = new Set(['EdDSA', 'ES256', 'RS256']);

export async function queueVerifier(issuer, audience) {
  const url = issuer.replace(/\/+$/, '') + '/.well-known/openid-configuration';
  const response = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const config = await response.json();
  if (config.issuer !== issuer) {
    throw new Error(`discovery names issuer ${config.issuer}, expected ${issuer}`);
  }
  const algorithms = config.id_token_signing_alg_values_supported.filter((a) => ALLOWED.has(a));
  const jwks = createRemoteJWKSet(new URL(config.jwks_uri));
  return async (token) => {
    const { payload, protectedHeader } = await jwtVerify(token, jwks, {
      issuer,
      audience,
      algorithms,
      requiredClaims: ['exp', 'iat', 'sub'],
    });
    return { kid: protectedHeader.kid, alg: protectedHeader.alg, claims: payload };
  };
}

async function main(argv) {
  if (argv.length < 3) {
    console.error('usage: node verify-token.mjs ISSUER AUDIENCE TOKEN...');
    return 2;
  }
  const [issuer, audience, ...tokens] = argv;
  const verify = await queueVerifier(issuer, audience);
  for (const token of tokens) {
    try {
      console.log(JSON.stringify(await verify(token)));
    } catch (error) {
      if (error instanceof errors.JOSEError) {
        console.error(`rejected: ${error.code}: ${error.message}`);
        return 1;
      }
      throw error;
    }
  }
  return 0;
}

process.exitCode = await main(process.argv.slice(2));
