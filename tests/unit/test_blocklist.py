"""Blocklist values: normalised as firewalls expect them, bad ones refused with the reason."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from services.responder.blocklist import InvalidEntry, etag, normalise, render_edl, render_nftables


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("ip", " 203.0.113.7 ", "203.0.113.7"),
        ("ip", "203.0.113.7/32", "203.0.113.7"),
        ("ip", "203.0.113.77/24", "203.0.113.0/24"),  # host bits dropped (strict=False)
        ("ip", "2001:DB8::1", "2001:db8::1"),
        ("ip", "2001:db8::1/48", "2001:db8::/48"),
        ("domain", "Evil.Example.COM.", "evil.example.com"),
        ("domain", "*.Evil.example", "*.evil.example"),
        ("domain", "bücher.example", "xn--bcher-kva.example"),
        ("url", "https://Evil.Example.com/Path/x?q=1#frag", "evil.example.com/Path/x?q=1"),
        ("url", "http://evil.example:8080", "evil.example:8080/"),
        ("url", "evil.example/drop", "evil.example/drop"),
        ("url", "http://[2001:db8::1]/a", "[2001:db8::1]/a"),
        ("url", "http://bücher.example/x", "xn--bcher-kva.example/x"),
        ("sha256", "  " + "AB" * 32 + " ", "ab" * 32),
    ],
)
def test_values_are_normalised(kind: str, value: str, expected: str) -> None:
    assert normalise(kind, value) == expected


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [
        ("ip", "300.1.1.1", "not an IP address or CIDR"),
        ("ip", "10.0.0.0/33", "not an IP address or CIDR"),
        ("ip", "evil.example", "not an IP address or CIDR"),
        ("domain", "localhost", "at least two labels"),
        ("domain", "-bad.example", "not a valid domain"),
        ("domain", "a b.example", "not a valid domain"),
        ("domain", "", "empty domain"),
        ("domain", "192.0.2.1", "an IP address is not a domain"),
        ("domain", ("a" * 64) + ".example", "not a valid domain"),
        ("url", "ftp://evil.example/x", "only http and https"),
        ("url", "javascript:alert(1)", "only http and https"),
        ("url", "http://user:pw@evil.example/", "credentials"),
        ("url", "http:///nohost", "needs a host"),
        ("url", "http://evil.example/a b", "spaces"),
        ("url", "http://*.evil.example/", "wildcard"),
        ("sha256", "abc", "64 hex digits"),
        ("sha256", "g" * 64, "64 hex digits"),
        ("md5", "d41d8cd98f00b204e9800998ecf8427e", "unknown list"),
        ("url", "http://evil.example/" + "a" * 3000, "longer than"),
    ],
)
def test_bad_values_are_refused_with_the_reason(kind: str, value: str, reason: str) -> None:
    with pytest.raises(InvalidEntry, match=reason):
        normalise(kind, value)


def test_an_edl_has_comments_at_the_top_only_and_one_entry_a_line() -> None:
    text = render_edl("ip", ["198.51.100.7", "203.0.113.0/24"])
    lines = text.splitlines()
    assert lines == ["# Vigil blocklist: ip, 2 entries", "198.51.100.7", "203.0.113.0/24"]
    assert text.endswith("\n")
    assert render_edl("sha256", []) == "# Vigil blocklist: sha256, 0 entries\n"


def test_the_etag_follows_the_body() -> None:
    assert etag(render_edl("ip", ["198.51.100.7"])) == etag(render_edl("ip", ["198.51.100.7"]))
    assert etag(render_edl("ip", ["198.51.100.7"])) != etag(render_edl("ip", ["198.51.100.8"]))


def test_the_nftables_script_merges_overlaps_and_splits_families() -> None:
    script = render_nftables(["203.0.113.0/24", "203.0.113.9", "198.51.100.7", "2001:db8::/32", "2001:db8::1"])
    assert "elements = { 198.51.100.7, 203.0.113.0/24 }" in script
    assert "elements = { 2001:db8::/32 }" in script
    assert "type ipv4_addr" in script and "type ipv6_addr" in script
    # Empty sets have no elements line: `elements = { }` is not valid nftables syntax.
    assert "elements =" not in render_nftables([])


@pytest.mark.parametrize(
    "values", [[], ["198.51.100.7", "203.0.113.0/24", "203.0.113.5"], ["2001:db8::/32", "192.0.2.1"]]
)
def test_nft_accepts_the_script(values: list[str], tmp_path: Path) -> None:
    nft = shutil.which("nft")
    if nft is None:
        pytest.skip("nft is not installed (apt-get install nftables) so the script cannot be checked")
    path = tmp_path / "blocklist.nft"
    path.write_text(render_nftables(values))
    checked = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    if checked.returncode != 0 and "Operation not permitted" in checked.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN here")
    assert checked.returncode == 0, checked.stderr
