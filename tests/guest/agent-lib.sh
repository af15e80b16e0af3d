# Sourced by the vmm-agent tests (agent-retry.sh, agent-superseded.sh): agent_setup NAME makes
# $work (removed at exit, with the agent $pid killed), $fail and bad(), and $net: a fake
# /sys/class/net naming one virtio-net eth0 (which the test's network namespace does not have).
agent_setup() {
  work=$(mktemp -d "/tmp/vmm-$1.XXXXXX")
  pid=""
  trap '[[ -n $pid ]] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
  fail=0
  test_name=$1
  bad() { echo "$test_name: FAIL $*"; fail=1; }
  net=$work/net
  mkdir -p "$net/eth0/device"
  ln -s /sys/bus/virtio/drivers/virtio_net "$net/eth0/device/driver"
  echo 52:54:00:12:34:56 >"$net/eth0/address"
}
