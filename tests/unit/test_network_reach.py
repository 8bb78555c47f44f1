"""reach and private: the pure parts (port tables, argument checks, /etc/hosts, names)."""
from __future__ import annotations

import pytest

from pytest_nsbox import SpecError
from pytest_nsbox.network.errors import NetworkError, PortRefused, PortTimeout
from pytest_nsbox.network.links import check_ifname
from pytest_nsbox.network.private import hosts_text
from pytest_nsbox.network.reach import check_port, check_timeout, parse_listening

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 00000000:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:AA9A 0100007F:1388 06 00000000:00000000 03:00001750 00000000     0        0 0 3
   3: 0100007F:1389 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 00000000:0
"""


def test_listening_ports_are_the_listen_state_rows() -> None:
    assert parse_listening(TCP) == {8080, 5000}
    assert parse_listening(TCP6) == {8081}
    assert parse_listening("") == set() and parse_listening(TCP.splitlines()[0]) == set()


@pytest.mark.parametrize("port", [0, 65536, -1, "80", 8.0, True, None])
def test_a_bad_port_is_a_spec_error(port: object) -> None:
    with pytest.raises(SpecError, match=r"^forward\(port=.*\): not a TCP port"):
        check_port(port, "forward")


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), "5", True, None])
def test_a_bad_timeout_is_a_spec_error(timeout: object) -> None:
    with pytest.raises(SpecError, match="wait_for_port"):
        check_timeout(timeout, "wait_for_port")
    assert check_timeout(2, "x") == 2.0


def test_port_errors_are_box_errors_and_os_errors() -> None:
    assert issubclass(PortTimeout, TimeoutError) and issubclass(PortTimeout, NetworkError)
    assert issubclass(PortRefused, ConnectionRefusedError)
    assert str(PortTimeout("box 'a': port 1")) == "box 'a': port 1"


def test_hosts_text_lists_each_box_once_by_name_and_hostname() -> None:
    text = hosts_text([("10.213.0.2", ["db", "db"]), ("10.213.0.3", ["web", "www"])])
    assert text == ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                    "10.213.0.2\tdb\n10.213.0.3\tweb www\n")


def test_interface_names_fit_the_kernels_limit() -> None:
    assert check_ifname("nsb0123456789ab") == "nsb0123456789ab"  # 15 bytes
    for bad in ("nsb0123456789abc", "", "a/b", "a b", "a:b", ".."):
        with pytest.raises(NetworkError, match="not 1 to 15 bytes"):
            check_ifname(bad)


def test_a_missing_interface_kind_names_its_module() -> None:
    import errno

    from pytest_nsbox.network.netlink import netlink_error, step

    missing = r"adding bridge x failed: netlink error 95 .*no bridge .*`modprobe bridge`"
    with pytest.raises(NetworkError, match=missing), step("adding bridge x", kind="bridge"):
        raise netlink_error()(errno.EOPNOTSUPP, "Unknown device type")
    with pytest.raises(NetworkError, match=r"^bringing up y failed: netlink error 19 "), \
            step("bringing up y"):
        raise netlink_error()(errno.ENODEV, "No such device")
