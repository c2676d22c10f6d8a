"""Which endpoints and addresses a push may go to."""

from __future__ import annotations

import ipaddress

import pytest

from notify.addresses import Endpoint, RefusedEndpoint, is_public, parse_endpoint, resolve_public

NOT_PUBLIC = [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "2002:7f00:1::1", "2002:a00:1::1",  # 6to4 around 127.0.0.1 and 10.0.0.1
    "64:ff9b::7f00:1", "64:ff9b::a00:1",  # NAT64 around 127.0.0.1 and 10.0.0.1
    "::127.0.0.1",  # IPv4-compatible
]
PUBLIC = ["93.184.215.14", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e",
          "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_private_and_special_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_global_unicast_addresses_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_an_https_endpoint_on_a_public_address_is_accepted() -> None:
    endpoint = parse_endpoint("https://93.184.215.14/wpush/v2/abc?x=1", allow_private=False)
    assert endpoint == Endpoint("https://93.184.215.14/wpush/v2/abc?x=1", "https", "93.184.215.14", 443)
    assert endpoint.origin == "https://93.184.215.14"
    assert parse_endpoint("https://push.example.com:8443/a", allow_private=False).origin == \
        "https://push.example.com:8443"


@pytest.mark.parametrize("url", [
    None, 42, "", "not a url", "push.example.com/abc", "ftp://push.example.com/x", "http://93.184.215.14/x",
    "https:///nohost", "https://user:pw@push.example.com/x", "https://push.example.com:99999/x",
    "https://push.example.com/a b", "https://püsh.example.com/x", "https://push.example.com/" + "a" * 2100,
    "https://127.0.0.1/x", "https://[::1]/x", "https://[::ffff:127.0.0.1]/x", "https://10.0.0.8/x",
    "https://169.254.169.254/latest/meta-data", "https://0.0.0.0/x", "https://[fe80::1]/x",
])
def test_refused_endpoints(url: object) -> None:
    with pytest.raises(RefusedEndpoint):
        parse_endpoint(url, allow_private=False)


def test_allow_private_admits_http_and_private_addresses() -> None:
    assert parse_endpoint("http://127.0.0.1:8080/push/1", allow_private=True).origin == "http://127.0.0.1:8080"
    assert parse_endpoint("https://10.0.0.8/x", allow_private=True).host == "10.0.0.8"
    with pytest.raises(RefusedEndpoint):
        parse_endpoint("ftp://127.0.0.1/x", allow_private=True)


async def test_a_name_that_resolves_to_loopback_is_refused() -> None:
    for url in ("https://localhost/x", "https://127.1/x", "https://2130706433/x"):
        with pytest.raises(RefusedEndpoint):
            await resolve_public(parse_endpoint(url, allow_private=False))


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(RefusedEndpoint):
        await resolve_public(parse_endpoint("https://nowhere.invalid/x", allow_private=False), timeout_s=5)


async def test_a_public_literal_needs_no_lookup() -> None:
    await resolve_public(parse_endpoint("https://93.184.215.14/x", allow_private=False))
