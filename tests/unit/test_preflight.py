"""
modcluster.preflight: what start-up would refuse, found without binding anything.
"""

from __future__ import annotations

import pytest
import trustme

from modcluster.config import parse_config
from modcluster.preflight import endpoint_problems, problems


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate and key, and a key of another certificate."""
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    other = ca.issue_cert("other.example")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    other.private_key_pem.write_to_path(str(d / "other-key.pem"))
    return d


def _problems(text: str) -> list[str]:
    return problems(parse_config(text))


def test_defaults_have_no_problem():
    assert _problems("") == []


@pytest.mark.parametrize("description", [
    "tcp:0:interface=127.0.0.1", "tcp:8080", "tcp6:0:interface=\\:\\:1",
    "tcp:port=0:interface=127.0.0.1:backlog=511", "tcp:0:interface=localhost",
    "systemd:domain=INET:index=0",
])
def test_valid_endpoints(description):
    assert endpoint_problems(description) == []


@pytest.mark.parametrize("description, expected", [
    ("tcp:8000:interface=10.0.0.256", "interface=10.0.0.256 is not an IP address"),
    ("tcp:80000", "port '80000' is not a number 0..65535"),
    ("tcp:http", "port 'http' is not a number"),
    ("tcp:8000:interfase=127.0.0.1", "unknown parameter interfase"),
    ("tcp:8000:backlog=-3", "backlog=-3 is not a positive number"),
    ("tcp6:8000:interface=127.0.0.1", "a tcp6 listener needs an IPv6 address"),
    ("ssl:8443", "an ssl listener needs privateKey=FILE"),
    ("ssl:8443:privateKey=/nonexistent/key.pem",
     "cannot read private key /nonexistent/key.pem"),
    ("unix:/nonexistent-dir/sock", "directory /nonexistent-dir does not exist"),
])
def test_invalid_endpoints(description, expected):
    found = endpoint_problems(description)
    assert len(found) == 1 and expected in found[0], found
    assert found[0].startswith(repr(description))


def test_each_problem_is_one_line_naming_the_key():
    found = _problems("""
[manager]
listen = ["tcp:8000:interface=10.0.0.256"]
[proxy]
listen = ["ssl:8443", "tcp:9000:interface=127.0.0.1", "tcp:9000:interface=127.0.0.1"]
[advertise]
security_key = "clé"
""")
    keys = [line.split(":", 1)[0] for line in found]
    assert keys == ["manager.listen[0]", "proxy.listen[0]", "proxy.listen[2]",
                    "advertise.security_key"], found
    assert "same address as proxy.listen[1]" in found[2]
    assert all("\n" not in line for line in found)


def test_wildcard_and_specific_address_on_one_port_clash():
    found = _problems("""
[manager]
listen = ["tcp:7000"]
[console]
listen = ["tcp:7000:interface=127.0.0.1"]
""")
    assert found == ["console.listen[0]: 'tcp:7000:interface=127.0.0.1' uses the same "
                     "address as manager.listen[0]"]


def test_port_zero_never_clashes():
    assert _problems("""
[manager]
listen = ["tcp:0:interface=127.0.0.1"]
[proxy]
listen = ["tcp:0:interface=127.0.0.1"]
""") == []


def test_missing_certificate_file(pki):
    found = _problems(f"""
[manager.tls]
enabled = true
certificate = "{pki}/missing.pem"
private_key = "{pki}/key.pem"
ca = "{pki}/ca.pem"
""")
    assert len(found) == 1
    assert found[0].startswith("manager.tls.certificate: cannot read certificate "
                               f"{pki}/missing.pem: No such file"), found


def test_key_not_matching_certificate(pki):
    found = _problems(f"""
[manager.tls]
enabled = true
certificate = "{pki}/cert.pem"
private_key = "{pki}/other-key.pem"
ca = "{pki}/ca.pem"
""")
    assert len(found) == 1 and found[0].startswith("manager.tls: "), found
    assert "cannot be used together" in found[0]


def test_matching_tls_files_pass(pki):
    assert _problems(f"""
[manager.tls]
enabled = true
certificate = "{pki}/cert.pem"
private_key = "{pki}/key.pem"
ca = "{pki}/ca.pem"
[proxy]
listen = ["ssl:0:interface=127.0.0.1:privateKey={pki}/key.pem:certKey={pki}/cert.pem"]
[proxy.tls]
ca = "{pki}/ca.pem"
client_certificate = "{pki}/cert.pem"
client_private_key = "{pki}/key.pem"
""") == []


def test_ssl_listener_with_mismatched_key(pki):
    found = _problems(f"""
[proxy]
listen = ["ssl:0:privateKey={pki}/other-key.pem:certKey={pki}/cert.pem"]
""")
    assert len(found) == 1 and found[0].startswith("proxy.listen[0]: "), found
    assert "cannot be used together" in found[0]


def test_node_tls_files(pki):
    found = _problems(f"""
[proxy.tls]
ca = "{pki}/nope.pem"
""")
    assert found == [f"proxy.tls.ca: cannot read CA certificate {pki}/nope.pem: "
                     "No such file or directory"]
    found = _problems(f"""
[proxy.tls]
client_certificate = "{pki}/cert.pem"
client_private_key = "{pki}/other-key.pem"
""")
    assert found == ["proxy.tls.client_private_key: does not match "
                     "proxy.tls.client_certificate"]


def test_tls_ticket_key_file(tmp_path):
    """proxy.tls_ticket_keys: nginx's 80-byte keys; a damaged or missing file is named."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_bytes(bytes(range(80)) + bytes(range(1, 81)))
    bad.write_bytes(b"x" * 48)
    assert _problems(f'[proxy]\ntls_ticket_keys = "{good}"\n') == []
    (found,) = _problems(f'[proxy]\ntls_ticket_keys = "{bad}"\n')
    assert found.startswith("proxy.tls_ticket_keys: ") and "48 bytes" in found \
        and "80-byte" in found
    (found,) = _problems(f'[proxy]\ntls_ticket_keys = "{tmp_path / "none"}"\n')
    assert found.startswith("proxy.tls_ticket_keys: ") and "No such file" in found
