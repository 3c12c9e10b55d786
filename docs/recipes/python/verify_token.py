#!/usr/bin/env python3
"""Verify Queue access tokens with PyJWT, configured from Queue's issuer URL.

    pip install 'pyjwt[crypto]'
    python3 verify_token.py https://queue.example.com my-audience "$ACCESS_TOKEN" [...]

Everything comes from the issuer: the discovery document gives the JWKS URL
and the algorithms Queue signs with; PyJWKClient fetches the JWKS, picks the
key by the token's `kid` and refetches when it meets an unknown `kid` (a
rotation). Prints one JSON line of claims per token; exits 1 at the first
token that does not verify.
"""

import json
import sys
import urllib.request

import jwt

# Queue signs with EdDSA, ES256 or RS256. Accept no other algorithm, whatever
# the discovery document or a token's header says.
ALLOWED = {"EdDSA", "ES256", "RS256"}


class QueueVerifier:
    def __init__(self, issuer: str, audience: str):
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        with urllib.request.urlopen(url, timeout=10) as response:
            config = json.load(response)
        if config["issuer"] != issuer:
            raise ValueError(f"discovery names issuer {config['issuer']!r}, expected {issuer!r}")
        self.issuer = issuer
        self.audience = audience
        self.algorithms = [a for a in config["id_token_signing_alg_values_supported"] if a in ALLOWED]
        # Keys are cached; an unknown kid triggers one refetch.
        self.jwks = jwt.PyJWKClient(config["jwks_uri"], cache_keys=True, lifespan=60, timeout=10)

    def verify(self, token: str) -> dict:
        key = self.jwks.get_signing_key_from_jwt(token)
        return jwt.decode(
            token,
            key,
            algorithms=self.algorithms,
            audience=self.audience,
            issuer=self.issuer,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    issuer, audience, tokens = argv[1], argv[2], argv[3:]
    verifier = QueueVerifier(issuer, audience)
    for token in tokens:
        try:
            claims = verifier.verify(token)
        except jwt.PyJWTError as error:
            print(f"rejected: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        header = jwt.get_unverified_header(token)
        print(json.dumps({"kid": header["kid"], "alg": header["alg"], "claims": claims}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
