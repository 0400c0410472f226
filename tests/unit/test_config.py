"""
The configuration file: strict loading, errors naming file and key, and the
generated reference staying in sync with the code.
"""

import pathlib

import pytest

from modcluster import configdoc
from modcluster.config import Config, ConfigError, load_config, parse_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_empty_file_gives_defaults():
    config = parse_config("")
    assert config == Config()
    assert config.manager.listen == ("tcp:6666:interface=127.0.0.1",)
    assert config.proxy.listen == ("tcp:8000:interface=127.0.0.1",)


def test_full_example():
    config = parse_config("""
[manager]
listen = ["tcp:7777:interface=127.0.0.1", "tcp6:7777:interface=\\\\:\\\\:1"]
balancer_name = "MyCluster"
max_nodes = 10
wait_before_remove = 30
persist = true

[manager.tls]
enabled = true
certificate = "c.pem"
private_key = "k.pem"
ca = "ca.pem"
identities = { "node1.example" = ["node1"], "ops" = ["node1", "node2"] }

[proxy]
listen = "tcp:8080:interface=127.0.0.1"
use_alias = true
ajp_secret = "s3cret"

[advertise]
enabled = true
frequency = "5.500"
security_key = "key"
""", "x.toml")
    assert config.manager.listen[1] == "tcp6:7777:interface=\\:\\:1"
    assert config.manager.max_nodes == 10
    assert config.manager.wait_before_remove == 30.0
    assert config.manager.tls.identities == {"node1.example": ("node1",), "ops": ("node1", "node2")}
    assert config.proxy.listen == ("tcp:8080:interface=127.0.0.1",)
    assert config.advertise.frequency == "5.500"


@pytest.mark.parametrize("text, key, reason", [
    ("[manager]\nmax_node = 3", "manager.max_node", "unknown key"),
    ("[nope]\n", "nope", "unknown key"),
    ("[manager]\nmax_nodes = 'ten'", "manager.max_nodes", "expected an integer"),
    ("[manager]\nmax_nodes = 0", "manager.max_nodes", "greater than 0"),
    ("[manager]\nwait_before_remove = 5", "manager.wait_before_remove", "at least 10"),
    ("[manager]\nmax_message_size = 100", "manager.max_message_size", "at least 1024"),
    ("[manager]\nlisten = ['http://x']", "manager.listen", "not a server endpoint"),
    ("[manager]\nlisten = []", "manager.listen", "at least one listener"),
    ("[manager]\npersist = 'yes'", "manager.persist", "expected true or false"),
    ("[manager.tls]\nenabled = true", "manager.tls", "certificate"),
    ("[proxy]\najp_packet_size = 100", "proxy", "ajp_packet_size"),
    ("[proxy]\najp_cping = 'sometimes'", "proxy.ajp_cping", "must be one of"),
    ("[proxy]\nunavailable_context_status = 500", "proxy.unavailable_context_status",
     "must be one of"),
    ("[proxy]\nretry_after = -1", "proxy.retry_after", "must not be negative"),
    ("[console]\npath = 'manager'", "console.path", "URL path"),
    ("[advertise]\nfrequency = '0'", "advertise.frequency", ""),
    ("[advertise]\ngroup = 'not an address'", "advertise.group", ""),
    ("manager = 3", "manager", "expected a table"),
    ("[manager\n", "", "not valid TOML"),
])
def test_errors_name_file_key_and_reason(text, key, reason):
    with pytest.raises(ConfigError) as e:
        parse_config(text, "bad.toml")
    assert e.value.source == "bad.toml"
    assert e.value.key == key
    assert reason in e.value.reason
    assert str(e.value).startswith(f"bad.toml: {key or '(top level)'}: ")


def test_load_config_reports_unreadable_files(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path / "missing.toml"))
    assert "cannot read" in e.value.reason
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"[manager]\nbalancer_name = '\xe9'\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(bad))
    assert "UTF-8" in e.value.reason


def test_configuration_reference_is_up_to_date():
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == configdoc.render(), (
        "docs/configuration.md is stale: run `python -m modcluster.configdoc > "
        "docs/configuration.md`")


def test_every_setting_is_documented():
    from modcluster.config import iter_fields

    for key, field, _ in iter_fields():
        assert field.metadata.get("doc"), f"{key} has no documentation"


def test_examples_are_valid():
    paths = sorted((ROOT / "examples").glob("*.toml"))
    # the glob must find the shipped examples, or this test checks nothing
    assert {"basic.toml", "advertise.toml", "mtls.toml"} <= {p.name for p in paths}
    for path in paths:
        assert isinstance(load_config(str(path)), Config), path


def test_unavailable_context_status_and_retry_after():
    """Issue 14 §2: 503 + Retry-After 10 s by default; httpd's 404 on request."""
    default = parse_config("")
    assert (default.proxy.unavailable_context_status, default.proxy.retry_after) == (503, 10)
    config = parse_config("[proxy]\nunavailable_context_status = 404\nretry_after = 0\n")
    assert (config.proxy.unavailable_context_status, config.proxy.retry_after) == (404, 0)
