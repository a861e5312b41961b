"""A SOAP test server for Ferry's interop tests, built with spyne (a real SOAP library).

Serves spyne's generated WSDL at /soap11?wsdl (SOAP 1.1) and /soap12?wsdl (SOAP 1.2), with:

- GetStock(sku): a typed result (integer, decimal, boolean, a list); sku "missing" raises a
  Client fault with a detail, sku "boom" a Server fault.
- GetPrice(sku): the same, but only with a WS-Security UsernameToken (PasswordText or
  PasswordDigest) for user SOAP_USER / SOAP_PASSWORD; otherwise a Client.Authentication fault.

GET /calls answers the number of SOAP requests received so far (to check retries).
Prints the port it listens on, then serves until killed.
"""

import base64
import hashlib
import logging
import os
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

from spyne import (Application, Array, Boolean, ComplexModel, Decimal, Fault,
                   Integer, ServiceBase, Unicode, rpc)
from spyne.protocol.soap import Soap11, Soap12
from spyne.server.wsgi import WsgiApplication
from spyne.util.wsgi_wrapper import WsgiMounter

TNS = "urn:ferry:stock"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
USER = os.environ.get("SOAP_USER", "ops")
PASSWORD = os.environ.get("SOAP_PASSWORD", "s3cret-pass")
CALLS = {"n": 0}


class Stock(ComplexModel):
    __namespace__ = TNS
    sku = Unicode
    quantity = Integer
    price = Decimal
    available = Boolean
    bins = Array(Unicode)


def stock(sku):
    if sku == "missing":
        raise Fault(faultcode="Client.UnknownSku", faultstring="no such sku: missing",
                    detail={"sku": sku})
    if sku == "boom":
        raise Fault(faultcode="Server.Unavailable", faultstring="the warehouse is down")
    return Stock(sku=sku, quantity=7, price="19.90", available=True, bins=["A1"])


def check_token(ctx):
    """Accepts a UsernameToken with the right password, as text or as digest."""
    doc = ctx.in_document
    token = None if doc is None else doc.find(".//{%s}UsernameToken" % WSSE)
    if token is None:
        raise Fault(faultcode="Client.Authentication", faultstring="a UsernameToken is required")
    user = token.findtext("{%s}Username" % WSSE)
    pw = token.find("{%s}Password" % WSSE)
    if user != USER or pw is None:
        raise Fault(faultcode="Client.Authentication", faultstring="unknown user")
    if pw.get("Type", "").endswith("#PasswordDigest"):
        nonce = base64.b64decode(token.findtext("{%s}Nonce" % WSSE) or "")
        created = token.findtext("{%s}Created" % WSU) or ""
        expected = base64.b64encode(
            hashlib.sha1(nonce + created.encode() + PASSWORD.encode()).digest()).decode()
        ok = pw.text == expected
    else:
        ok = pw.text == PASSWORD
    if not ok:
        raise Fault(faultcode="Client.Authentication", faultstring="wrong password")


class StockService(ServiceBase):
    @rpc(Unicode, _returns=Stock)
    def GetStock(ctx, sku):
        return stock(sku)

    @rpc(Unicode, _returns=Stock)
    def GetPrice(ctx, sku):
        check_token(ctx)
        return stock(sku)


def app(protocol):
    return WsgiApplication(Application([StockService], tns=TNS, name="Stock",
                                       in_protocol=protocol(validator="lxml"),
                                       out_protocol=protocol()))


mounted = WsgiMounter({"soap11": app(Soap11), "soap12": app(Soap12)})


def root(environ, start_response):
    if environ["REQUEST_METHOD"] == "GET" and environ.get("PATH_INFO") == "/calls":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(CALLS["n"]).encode()]
    if environ["REQUEST_METHOD"] == "POST":
        CALLS["n"] += 1
    return mounted(environ, start_response)


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


if __name__ == "__main__":
    # Faults are answers here, not server errors: no tracebacks in the test output.
    logging.getLogger("spyne").setLevel(logging.CRITICAL)
    server = make_server("127.0.0.1", 0, root, handler_class=Quiet)
    print(server.server_port, flush=True)
    sys.stdout.flush()
    server.serve_forever()
