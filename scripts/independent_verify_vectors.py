#!/usr/bin/env python3
"""An independent check of the test vectors in docs/ledger-format.md, written
from the document alone (Python stdlib + `cryptography` for Ed25519):
    python3 scripts/independent_verify_vectors.py [docs/ledger-format.md]
"""
import base64, hashlib, hmac, json, re, sys

doc = open(sys.argv[1] if len(sys.argv) > 1 else "docs/ledger-format.md", encoding="utf-8").read()
vectors = doc.split("## 8. Test vectors", 1)[1]
key = bytes.fromhex(re.search(r"key \(hex\) `(\w+)`", vectors).group(1))
events = re.findall(
    r"```\n(\{.*\})\n```\n\n- `prev_hash` `(\w+)`\n- `hash` = .* = `(\w+)`\n- `mac` = .* = `(\w+)`", vectors)
assert len(events) == 3, "expected three example events"
text = vectors

def jcs(v):
    # RFC 8785 for integer-only JSON: sort keys by UTF-16 code units.
    if isinstance(v, dict):
        items = sorted(v.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + jcs(x) for k, x in items) + "}"
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)

leaves = []
prev_by_stream = {}
for canonical, prev_hex, hash_hex, mac_hex in events:
    record = json.loads(canonical)
    assert jcs(record) == canonical, "canonical form differs"
    stream = (record["aggregate_type"], record["aggregate_id"])
    prev = prev_by_stream.get(stream, bytes(32))
    assert prev.hex() == prev_hex
    h = hashlib.sha256(b"queue.event.v1\x00" + prev + canonical.encode()).digest()
    assert h.hex() == hash_hex, "hash differs"
    assert hmac.new(key, h, hashlib.sha256).hexdigest() == mac_hex, "mac differs"
    prev_by_stream[stream] = h
    leaves.append(hashlib.sha256(b"\x00" + h).digest())

def node(l, r): return hashlib.sha256(b"\x01" + l + r).digest()
def mth(ls):
    if len(ls) == 1: return ls[0]
    k = 1
    while k * 2 < len(ls): k *= 2
    return node(mth(ls[:k]), mth(ls[k:]))

root3 = mth(leaves)
assert root3.hex() == re.search(r"root of size 3: `(\w+)`", text).group(1)
assert mth(leaves[:2]).hex() == re.search(r"root of size 2: `(\w+)`", text).group(1)
incl = re.findall(r"[0-9a-f]{64}", re.search(r"inclusion proof of leaf index 1 .*", text).group(0))
assert incl == [leaves[0].hex(), leaves[2].hex()], "inclusion proof differs"
assert node(node(leaves[0], leaves[1]), leaves[2]) == root3

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
vkey = re.search(r"verifier key `(\S+)`", text).group(1)
name, key_id, key_b64 = vkey.split("+", 2)
raw = base64.b64decode(key_b64)
assert raw[0] == 1
assert hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() == key_id
note = text.split("### Checkpoint over size 3", 1)[1].split("```\n", 2)[1]
body, sigs = note.split("\n\n", 1)
body += "\n"
assert body == f"{name}\n3\n{base64.b64encode(root3).decode()}\n"
sig_line = sigs.strip("\n").split("\n")[0]
assert sig_line.startswith("\u2014 " + name + " ")
blob = base64.b64decode(sig_line.split(" ")[2])
assert blob[:4].hex() == key_id
Ed25519PublicKey.from_public_bytes(raw[1:]).verify(blob[4:], body.encode())
print(f"independent check: {len(events)} events, hashes, MACs, Merkle roots and the checkpoint signature all match")
