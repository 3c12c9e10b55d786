"""The pysaml2 identity provider of idp.py as a real HTTP server on loopback,
for the end-to-end SAML tests: a browser (the test) follows Queue's 303 to
the IdP's SSO URL, the IdP parses Queue's AuthnRequest (HTTP-Redirect
binding), "authenticates" its one configured user and answers the
HTTP-POST binding's auto-submitting form to the SP's ACS, exactly as a
deployed IdP would.

Usage: idp_server.py DIR < config.json

config: {"idp_entity_id": "...", "sp_metadata": ["<xml>", ...],
         "user": {"name_id": "...", "attributes": {"mail": ["..."], ...}}}

Binds 127.0.0.1 on a free port and prints one line, {"port": N,
"metadata": "<IdP metadata XML, SSO URL http://127.0.0.1:N/sso/redirect>"},
then serves until killed:
  GET /sso/redirect?SAMLRequest=…&RelayState=…  SP-initiated: the form
      answering that request (InResponseTo = its ID, Destination = its ACS).
  GET /idp-initiated?sp=<SP entity id>          an unsolicited response.
  PUT /user/groups  body: a JSON list           the IdP's administrator
      moves the user to these groups; later responses carry them.
  PUT /sso  body: {"started_at"?: epoch secs, "honor_force_authn"?: bool}
      the IdP's own session of the user: a response's AuthnInstant is
      when it started (a login answered from it), unless the request says
      ForceAuthn="true" and the IdP honours it (default): then the user
      authenticates anew and the session starts now.
A request the IdP cannot parse (unknown SP, bad encoding, not for this IdP)
answers 400 with the reason.
"""

import json
import os
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from idp import server, write_sp_files  # noqa: E402
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, xmldsig  # noqa: E402
from saml2.metadata import entity_descriptor  # noqa: E402
from saml2.saml import AUTHN_PASSWORD_PROTECTED, NAMEID_FORMAT_EMAILADDRESS, NameID  # noqa: E402


def make_handler(idp, user, sso):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, status, body, headers=()):
            data = body.encode()
            self.send_response(status)
            for name, value in headers:
                if name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self):
            path = urlparse(self.path).path
            length = int(self.headers.get("Content-Length", "0"))
            try:
                body = json.loads(self.rfile.read(length))
                if path == "/user/groups":
                    if not isinstance(body, list) or not all(isinstance(g, str) for g in body):
                        raise ValueError("a JSON list of group names")
                    user.setdefault("attributes", {})["groups"] = body
                elif path == "/sso":
                    if not isinstance(body, dict):
                        raise ValueError("a JSON object")
                    if "started_at" in body:
                        sso["started_at"] = int(body["started_at"])
                    if "honor_force_authn" in body:
                        sso["honor_force_authn"] = bool(body["honor_force_authn"])
                else:
                    self.answer(404, "not found")
                    return
            except ValueError as error:
                self.answer(400, str(error))
                return
            self.answer(204, "")

        def do_GET(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            try:
                if url.path == "/sso/redirect":
                    parsed = idp.parse_authn_request(query["SAMLRequest"][0], BINDING_HTTP_REDIRECT)
                    request = parsed.message
                    sp = request.issuer.text
                    in_response_to = request.id
                    relay_state = query.get("RelayState", [""])[0]
                    destination = request.assertion_consumer_service_url
                    forced = str(request.force_authn).lower() in ("true", "1")
                    if forced and sso["honor_force_authn"]:
                        sso["started_at"] = int(time.time())
                elif url.path == "/idp-initiated":
                    sp = query["sp"][0]
                    in_response_to = None
                    relay_state = ""
                    destination = None
                else:
                    self.answer(404, "not found")
                    return
                if not destination:
                    services = idp.metadata.assertion_consumer_service(sp, binding=BINDING_HTTP_POST)
                    destination = services[0]["location"]
                response = idp.create_authn_response(
                    identity=user.get("attributes", {}),
                    in_response_to=in_response_to,
                    destination=destination,
                    sp_entity_id=sp,
                    name_id=NameID(format=NAMEID_FORMAT_EMAILADDRESS, text=user["name_id"]),
                    authn={
                        "class_ref": AUTHN_PASSWORD_PROTECTED,
                        "authn_instant": sso["started_at"],
                    },
                    sign_response=False,
                    sign_assertion=True,
                    sign_alg=xmldsig.SIG_RSA_SHA256,
                    digest_alg=xmldsig.DIGEST_SHA256,
                )
                http_args = idp.apply_binding(
                    BINDING_HTTP_POST, str(response), destination, relay_state, response=True
                )
            except Exception as error:  # the reason, for the test's assertion message
                self.answer(400, "%s: %s" % (type(error).__name__, error))
                return
            self.answer(200, http_args["data"], http_args.get("headers", []))

    return Handler


def main():
    directory = sys.argv[1]
    os.makedirs(directory, exist_ok=True)
    config = json.load(sys.stdin)
    with tempfile.TemporaryDirectory() as tmp:
        sp_files = write_sp_files(tmp, config["sp_metadata"])
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), None)
        port = httpd.server_address[1]
        request = {
            "idp_entity_id": config["idp_entity_id"],
            "sso_url": "http://127.0.0.1:%d/sso/redirect" % port,
        }
        idp_config, idp = server(request, directory, "idp", sp_files)
        sso = {"started_at": int(time.time()), "honor_force_authn": True}
        httpd.RequestHandlerClass = make_handler(idp, config["user"], sso)
        print(json.dumps({"port": port, "metadata": str(entity_descriptor(idp_config))}), flush=True)
        httpd.serve_forever()


if __name__ == "__main__":
    main()
