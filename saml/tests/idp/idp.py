"""A real SAML 2.0 identity provider for the queue-saml tests: pysaml2's IdP
(PyPI) signing with xmlsec1 (Debian), installed by scripts/saml-setup.

Usage: idp.py DIR < request.json > answer.json

DIR holds the IdP's keys (idp.key/idp.crt, and other.key/other.crt: a key the
SP does not trust), created on first use. The request names the SPs the IdP
knows (their metadata XML, as Queue publishes it) and the responses to issue:

  {"idp_entity_id": "...", "sso_url": "...", "sp_metadata": ["<xml>", ...],
   "responses": [{"key": "idp"|"other", "sp_entity_id": "...",
                  "destination": "...", "in_response_to": "..."|null,
                  "name_id": "...", "attributes": {"mail": ["..."], ...},
                  "sign_response": bool, "sign_assertion": bool}]}

The answer: {"metadata": "<IdP metadata XML>", "other_certificate_der_hex":
"<the other key's certificate>", "responses": ["<Response XML>", ...]}.
"""

import datetime
import json
import os
import sys
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_REDIRECT, xmldsig
from saml2.config import IdPConfig
from saml2.metadata import entity_descriptor
from saml2.saml import AUTHN_PASSWORD_PROTECTED, NAME_FORMAT_BASIC, NAMEID_FORMAT_EMAILADDRESS, NameID
from saml2.server import Server


def ensure_key(directory, name):
    key_path = os.path.join(directory, name + ".key")
    cert_path = os.path.join(directory, name + ".crt")
    if os.path.exists(key_path) and os.path.exists(cert_path):
        return key_path, cert_path
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "queue-test-idp-" + name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    tmp_key = key_path + ".tmp"
    tmp_cert = cert_path + ".tmp"
    with open(tmp_key, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    with open(tmp_cert, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_key, key_path)
    os.replace(tmp_cert, cert_path)
    return key_path, cert_path


def server(request, directory, key_name, sp_files):
    key_path, cert_path = ensure_key(directory, key_name)
    config = IdPConfig()
    config.load(
        {
            "entityid": request["idp_entity_id"],
            "service": {
                "idp": {
                    "endpoints": {
                        "single_sign_on_service": [(request["sso_url"], BINDING_HTTP_REDIRECT)],
                    },
                    "policy": {
                        "default": {
                            "lifetime": {"minutes": 5},
                            "attribute_restrictions": None,
                            "name_form": NAME_FORMAT_BASIC,
                        }
                    },
                    "name_id_format": [NAMEID_FORMAT_EMAILADDRESS],
                }
            },
            "key_file": key_path,
            "cert_file": cert_path,
            "metadata": {"local": sp_files},
            "xmlsec_binary": "/usr/bin/xmlsec1",
        }
    )
    return config, Server(config=config)


def write_sp_files(directory, metadata):
    """The SPs' metadata XML as files in `directory`, as pysaml2 reads them."""
    paths = []
    for i, xml in enumerate(metadata):
        path = os.path.join(directory, "sp%d.xml" % i)
        with open(path, "w") as f:
            f.write(xml)
        paths.append(path)
    return paths


def main():
    directory = sys.argv[1]
    os.makedirs(directory, exist_ok=True)
    request = json.load(sys.stdin)
    with tempfile.TemporaryDirectory() as tmp:
        sp_files = write_sp_files(tmp, request["sp_metadata"])
        ensure_key(directory, "other")
        config, _ = server(request, directory, "idp", sp_files)
        with open(os.path.join(directory, "other.crt"), "rb") as f:
            other = x509.load_pem_x509_certificate(f.read())
        answer = {
            "metadata": str(entity_descriptor(config)),
            "other_certificate_der_hex": other.public_bytes(serialization.Encoding.DER).hex(),
            "responses": [],
        }
        servers = {}
        for spec in request.get("responses", []):
            key = spec.get("key", "idp")
            if key not in servers:
                servers[key] = server(request, directory, key, sp_files)[1]
            idp = servers[key]
            response = idp.create_authn_response(
                identity=spec.get("attributes", {}),
                in_response_to=spec.get("in_response_to"),
                destination=spec["destination"],
                sp_entity_id=spec["sp_entity_id"],
                name_id=NameID(format=NAMEID_FORMAT_EMAILADDRESS, text=spec["name_id"]),
                authn={"class_ref": AUTHN_PASSWORD_PROTECTED},
                sign_response=spec.get("sign_response", False),
                sign_assertion=spec.get("sign_assertion", True),
                sign_alg=xmldsig.SIG_RSA_SHA256,
                digest_alg=xmldsig.DIGEST_SHA256,
            )
            answer["responses"].append(str(response))
        json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
