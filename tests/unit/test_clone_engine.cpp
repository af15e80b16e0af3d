// The clone layer's host-side planning, without KVM: the interfaces and address a clone, fleet
// member, pool member or fork child gets (plan_nets), where a template goes (template_path), and a
// template's draft: removed unless sealed, sealed read-only under its final name.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "clone/clones.hpp"
#include "clone/make_template.hpp"
#include "temp_dir.hpp"
#include "vmm/state_dir.hpp"

namespace fs = std::filesystem;
using namespace vmm;
using namespace vmm::clone;

namespace {

NetSpec pattern(std::string tap, std::string bridge = {}, std::string netns = {}, std::string mac = {}) {
  return NetSpec{.tap = std::move(tap), .mac = std::move(mac), .bridge = std::move(bridge), .netns = std::move(netns)};
}

using vmm::test::TempDir;

}  // namespace

TEST_CASE("clone: plan_nets gives each VM its interfaces, MACs and address, or says why not") {
  const NetSource bridged{.kind = "template", .interfaces = 1, .ip = "10.0.0.2/24", .gateway = "10.0.0.1"};
  SUBCASE("one --net per interface of the source") {
    auto none = plan_nets("clone", {}, bridged, "web-1", 1, "10.0.0.5/24", "", false);
    REQUIRE_FALSE(none);
    CHECK(none.error().message().find("the template has 1 network interface(s)") != std::string::npos);
    CHECK(none.error().message().find("0 given") != std::string::npos);
    CHECK_FALSE(plan_nets("fleet", {pattern("a{i}"), pattern("b{i}")}, bridged, "web-1", 1, "10.0.0.5/24", "", false));
  }
  SUBCASE("names from the pattern, a random locally administered MAC unless one is given") {
    auto p = plan_nets("fleet", {pattern("t{i}-{name}", "br0")}, bridged, "web", 7, "10.0.0.9", "", false);
    REQUIRE(p);
    REQUIRE(p->nets.size() == 1);
    CHECK(p->nets[0].tap == "t7-web");
    CHECK(p->nets[0].bridge == "br0");
    REQUIRE(p->nets[0].mac.size() == 17);
    CHECK(p->nets[0].mac.starts_with("02:"));
    CHECK(p->ip == "10.0.0.9/24");  // normalised
    auto again = plan_nets("fleet", {pattern("t{i}", "br0")}, bridged, "web", 7, "10.0.0.9", "", false);
    REQUIRE(again);
    CHECK(again->nets[0].mac != p->nets[0].mac);
    auto given = plan_nets("clone", {pattern("t1", "", "", "52:54:00:12:34:56")}, bridged, "c", 1, "10.0.0.3/24", "", false);
    REQUIRE(given);
    CHECK(given->nets[0].mac == "52:54:00:12:34:56");
    // Given in upper case, written as the guest's agent reads it.
    auto upper = plan_nets("clone", {pattern("t1", "", "", "52:54:00:AB:CD:EF")}, bridged, "c", 1, "10.0.0.3/24", "", false);
    REQUIRE(upper);
    CHECK(upper->nets[0].mac == "52:54:00:ab:cd:ef");
  }
  SUBCASE("a name too long or with a bad character once expanded") {
    CHECK_FALSE(plan_nets("fleet", {pattern("tap-{name}")}, bridged, "a-very-long-name", 1, "10.0.0.5", "", false));
    CHECK_FALSE(plan_nets("fleet", {pattern("t{name}")}, bridged, "a/b", 1, "10.0.0.5", "", false));
  }
  SUBCASE("on a shared network a VM needs an address of its own") {
    auto dup = plan_nets("clone", {pattern("t1", "br0")}, bridged, "c", 1, "", "", false);
    REQUIRE_FALSE(dup);
    CHECK(dup.error().message().find("needs --ip") != std::string::npos);
    CHECK(dup.error().message().find("10.0.0.2/24") != std::string::npos);
    // unless the source uses DHCP, or (a pool's member) it gets one with the request
    CHECK(plan_nets("clone", {pattern("t1", "br0")}, NetSource{.kind = "template", .interfaces = 1, .ip = "dhcp", .gateway = ""}, "c",
                    1, "", "", false));
    CHECK(plan_nets("pool", {pattern("t1", "br0")}, bridged, "c", 1, "", "", true));
  }
  SUBCASE("a source on DHCP: each VM asks for its own lease (it kept its source's, announced from its new MAC)") {
    const NetSource dhcp{.kind = "template", .interfaces = 1, .ip = "dhcp", .gateway = ""};
    for (bool later : {false, true}) {
      auto p = plan_nets(later ? "pool" : "clone", {pattern("t1", "br0")}, dhcp, "c", 1, "", "", later);
      REQUIRE(p);
      CHECK(p->ip == "dhcp");
    }
    auto fixed = plan_nets("clone", {pattern("t1", "br0")}, dhcp, "c", 1, "10.0.0.7/24", "", false);
    REQUIRE(fixed);
    CHECK(fixed->ip == "10.0.0.7/24");
  }
  SUBCASE("an address that is the gateway's, given or the source's") {
    auto given = plan_nets("clone", {pattern("t1", "br0")}, bridged, "c", 1, "10.0.0.9/24", "10.0.0.9", false);
    REQUIRE_FALSE(given);
    CHECK(given.error().message().find("is the gateway's address (10.0.0.9)") != std::string::npos);
    auto sources = plan_nets("clone", {pattern("t1", "br0")}, bridged, "c", 1, "10.0.0.1/24", "", false);
    REQUIRE_FALSE(sources);
    CHECK(sources.error().message().find("is the gateway's address (10.0.0.1)") != std::string::npos);
  }
  SUBCASE("in a namespace of its own a VM keeps its source's address and gateway") {
    auto p = plan_nets("fork", {pattern("t1", "", "ns{i}")}, bridged, "c", 3, "", "", false);
    REQUIRE(p);
    CHECK(p->nets[0].netns == "ns3");
    CHECK(p->ip == "10.0.0.2/24");
    CHECK(p->gateway == "10.0.0.1");
  }
  SUBCASE("a bad address or gateway") {
    CHECK_FALSE(plan_nets("clone", {pattern("t1", "br0")}, bridged, "c", 1, "10.0.0.256", "", false));
    CHECK_FALSE(plan_nets("clone", {pattern("t1", "br0")}, bridged, "c", 1, "10.0.0.5", "10.0.0.1/24", false));
  }
  SUBCASE("no interfaces, none given") {
    auto p = plan_nets("clone", {}, NetSource{.kind = "template", .interfaces = 0, .ip = "", .gateway = ""}, "c", 1, "", "", false);
    REQUIRE(p);
    CHECK(p->nets.empty());
  }
}

TEST_CASE("clone: a user's default state directory: XDG_STATE_HOME, HOME, the user database, never / or a relative path") {
  using vmm::user_state_dir;
  CHECK(user_state_dir("/x/state", "/home/u", "/home/p") == "/x/state/vmm");
  CHECK(user_state_dir(nullptr, "/home/u", "/home/p") == "/home/u/.local/state/vmm");
  CHECK(user_state_dir("", "/home/u", "/home/p") == "/home/u/.local/state/vmm");
  CHECK(user_state_dir("rel/state", "/home/u", nullptr) == "/home/u/.local/state/vmm");  // relative: ignored (XDG)
  // A home of / (a service account's) is no home, from HOME as from the user database.
  CHECK(user_state_dir(nullptr, "/", "/home/p") == "/home/p/.local/state/vmm");
  CHECK(user_state_dir(nullptr, "//", "/") == "");
  CHECK(user_state_dir(nullptr, "relative", "/srv/u") == "/srv/u/.local/state/vmm");
  CHECK(user_state_dir(nullptr, nullptr, nullptr) == "");
  CHECK(user_state_dir(nullptr, "", "") == "");
}

TEST_CASE("clone: a template's place, by name in the state directory or by path") {
  TempDir d("vmm-clone-engine");
  // A relative state directory is made absolute (a linked clone's overlay names its template's disk
  // by a path read relative to the overlay's own directory).
  CHECK(vmm::resolve_state_dir("st") == std::filesystem::current_path() / "st");
  CHECK(vmm::resolve_state_dir("st").is_absolute());
  auto by_name = template_path(d.path.string(), "web");
  REQUIRE(by_name);
  CHECK(*by_name == d.path / "templates" / "web");
  auto by_path = template_path(d.path.string(), (d.path / "elsewhere" / "t1").string());
  REQUIRE(by_path);
  CHECK(*by_path == d.path / "elsewhere" / "t1");
  for (const char* bad : {".hidden", "a b", "semi;colon", ""}) {
    CAPTURE(bad);
    CHECK_FALSE(template_path(d.path.string(), bad));
  }
  auto ctl = template_path(d.path.string(), (d.path / "x\ny").string());
  REQUIRE_FALSE(ctl);
  CHECK(ctl.error().message().find("must be 1 to 64 letters, digits") != std::string::npos);
  CHECK(ctl.error().message().find('\n') == std::string::npos);
  // By path, the directory's name is the template's: the same rule as a name.
  for (const std::string& bad : std::vector<std::string>{"web server", "semi;colon", ".hidden", std::string(65, 'a')}) {
    CAPTURE(bad);
    CHECK_FALSE(template_path(d.path.string(), (d.path / bad).string()));
  }
  auto slash = template_path(d.path.string(), (d.path / "t2").string() + "/");
  REQUIRE(slash);
  CHECK(*slash == d.path / "t2");
}

TEST_CASE("clone: a template draft is removed unless sealed, and once sealed it is read-only under its name") {
  TempDir d("vmm-clone-engine");
  const std::string sdir = d.path.string();
  SUBCASE("abandoned") {
    fs::path tmp;
    {
      auto draft = begin_template(sdir, "t");
      REQUIRE(draft);
      tmp = (*draft)->tmp;
      CHECK(fs::is_directory(tmp / "disks"));
      CHECK(tmp.filename().string().starts_with(".t.tmp-"));
      std::ofstream(tmp / "state.bin") << "x";
    }
    CHECK_FALSE(fs::exists(tmp));
    CHECK_FALSE(fs::exists(d.path / "templates" / "t"));
  }
  SUBCASE("sealed") {
    auto draft = begin_template(sdir, "t");
    REQUIRE(draft);
    std::ofstream((*draft)->tmp / "disks" / "disk0.img") << "0123456789";
    Manifest m;
    m.name = "t";
    m.memory = 4 << 20;
    m.disks.push_back(TemplateDisk{.file = {.name = "disks/disk0.img"}, .id = "disk0", .format = "raw", .read_only = false});
    REQUIRE(seal_template(**draft, m));
    const fs::path dest = d.path / "templates" / "t";
    CHECK(fs::is_directory(dest));
    CHECK_FALSE(fs::exists((*draft)->tmp));
    CHECK(m.disks[0].file.size == 10);  // summed as it was sealed
    struct stat st {};
    REQUIRE(::stat((dest / "disks" / "disk0.img").c_str(), &st) == 0);
    CHECK((st.st_mode & 0222) == 0);
    REQUIRE(::stat((dest / "manifest.json").c_str(), &st) == 0);
    CHECK((st.st_mode & 0222) == 0);
    // Its destination exists now: another draft of the same name is refused.
    auto again = begin_template(sdir, "t");
    REQUIRE_FALSE(again);
    CHECK(again.error().message.find("already exists") != std::string::npos);
    CHECK(again.error().status == exit_code::kUsage);
  }
}

#include "clone/inventory.hpp"
#include "vmm/api/registry.hpp"

namespace {

void write_record(const fs::path& dir, const std::string& name, int64_t pid) {
  fs::create_directories(dir);
  std::ofstream(dir / "clone.json") << *clone_json(CloneRecord{.name = name, .template_dir = "/t/web", .full = false, .pid = pid,
                                                             .created = "2026-12-05T00:00:00Z"});
}

}  // namespace

TEST_CASE("clone: clones on disk are listed as running, stopped or starting, and only stopped ones are removed") {
  TempDir d("vmm-clone-engine");
  const fs::path clones = d.path / "clones";
  write_record(clones / "stopped1", "stopped1", 4242);  // its process ended long ago
  fs::create_directories(clones / "member");             // no record yet: a pool's member
  write_record(clones / "forkchild", "forkchild", 0);    // a fork's child before it runs
  write_record(clones / "running1", "running1", ::getpid());
  auto running = api::Registration::create(d.path, "running1");  // this process "runs" it
  REQUIRE(running);
  // Things that are not clones: a file, a symlink to a directory that must survive.
  std::ofstream(clones / "stray.txt") << "x";
  fs::create_directories(d.path / "precious");
  std::ofstream(d.path / "precious" / "keep") << "x";
  fs::create_directory_symlink(d.path / "precious", clones / "link");

  const auto list = list_clones(d.path);
  REQUIRE(list.size() == 4);
  CHECK(list[0].name == "forkchild");
  CHECK(list[0].state == CloneEntry::State::Starting);
  CHECK(list[1].name == "member");
  CHECK(list[1].state == CloneEntry::State::Starting);
  CHECK_FALSE(list[1].record);
  CHECK(list[2].name == "running1");
  CHECK(list[2].state == CloneEntry::State::Running);
  CHECK(list[2].pid == ::getpid());
  CHECK(list[3].name == "stopped1");
  CHECK(list[3].state == CloneEntry::State::Stopped);
  REQUIRE(list[3].record);
  CHECK(list[3].record->template_dir == "/t/web");

  auto busy = remove_clone(d.path, "running1", RemoveRunning::Refuse);
  REQUIRE_FALSE(busy);
  CAPTURE(busy.error().message());
  CHECK(busy.error().message().find("is running (pid ") != std::string::npos);
  CHECK(fs::exists(clones / "running1" / "clone.json"));
  auto starting = remove_clone(d.path, "member", RemoveRunning::Refuse);
  REQUIRE_FALSE(starting);
  CHECK(starting.error().message().find("is starting") != std::string::npos);
  CHECK(fs::exists(clones / "member"));
  CHECK_FALSE(remove_clone(d.path, "forkchild", RemoveRunning::Refuse));

  REQUIRE(remove_clone(d.path, "stopped1", RemoveRunning::Refuse));
  CHECK_FALSE(fs::exists(clones / "stopped1"));
  // Its name was taken while it went, and given back.
  CHECK_FALSE(fs::exists(d.path / "run" / "stopped1"));
  REQUIRE(remove_clone(d.path, "member", RemoveRunning::Kill));  // starting, no process to kill: removed
  CHECK_FALSE(fs::exists(clones / "member"));

  for (const char* bad : {"../precious", "link", "stray.txt", "", ".", "..", "nosuch"}) {
    CAPTURE(bad);
    CHECK_FALSE(remove_clone(d.path, bad, RemoveRunning::Kill));
  }
  CHECK(fs::exists(d.path / "precious" / "keep"));
  CHECK(fs::exists(clones / "running1"));
}

// The last-resort state directory is a fixed path in /tmp: another user may have made it first.
TEST_CASE("state dir: a fixed path in a shared directory is used only if it is this user's alone") {
  TempDir d("vmm-private-dir");
  const auto fresh = d.path / "fresh";
  CHECK_FALSE(vmm::unsafe_private_dir(fresh));  // made now, 0700
  struct stat st {};
  REQUIRE(::lstat(fresh.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0700);
  CHECK_FALSE(vmm::unsafe_private_dir(fresh));  // and fine again
  const auto open_dir = d.path / "open";
  REQUIRE(::mkdir(open_dir.c_str(), 0700) == 0);
  REQUIRE(::chmod(open_dir.c_str(), 0777) == 0);
  auto why = vmm::unsafe_private_dir(open_dir);
  REQUIRE(why);
  CHECK(why->find("other users can enter it") != std::string::npos);
  const auto link = d.path / "link";
  REQUIRE(::symlink(fresh.c_str(), link.c_str()) == 0);
  why = vmm::unsafe_private_dir(link);
  REQUIRE(why);
  CHECK(why->find("symbolic link") != std::string::npos);
  const auto file = d.path / "file";
  std::ofstream(file) << "x";
  CHECK(vmm::unsafe_private_dir(file));
  if (::geteuid() == 0) {  // another user's directory (root can make one)
    const auto theirs = d.path / "theirs";
    REQUIRE(::mkdir(theirs.c_str(), 0700) == 0);
    REQUIRE(::chown(theirs.c_str(), 65534, 65534) == 0);
    why = vmm::unsafe_private_dir(theirs);
    REQUIRE(why);
    CHECK(why->find("owned by uid 65534") != std::string::npos);
  }
}

#include "disk/qcow2.hpp"

#include <sys/mount.h>

// A linked clone whose record is unreadable (empty after a crash: records are not fsynced) still
// counts as its template's dependant through its overlays' backing files: `template rm` would
// otherwise have taken the disks they stand on.
TEST_CASE("clone: a linked clone without a readable record depends on the template its overlays name") {
  TempDir d("vmm-clone-engine");
  const fs::path tdir = d.path / "templates" / "web", other = d.path / "templates" / "db";
  for (const auto& t : {tdir, other}) {
    fs::create_directories(t / "disks");
    std::ofstream(t / "disks" / "disk0.img") << std::string(1 << 16, '\0');
  }
  auto overlay = [&](const std::string& clone, const fs::path& backing) {
    fs::create_directories(d.path / "clones" / clone / "disk");
    REQUIRE(vmm::disk::Qcow2::create(d.path / "clones" / clone / "disk" / "disk0.qcow2",
                                     vmm::disk::Qcow2CreateOptions{.size = 0, .cluster_bits = 16, .backing = backing.string(),
                                                                   .backing_format = "raw"}));
  };
  overlay("crashed", tdir / "disks" / "disk0.img");
  std::ofstream(d.path / "clones" / "crashed" / "clone.json");  // empty
  overlay("norecord", tdir / "disks" / "disk0.img");
  overlay("elsewhere", other / "disks" / "disk0.img");
  fs::create_directories(d.path / "clones" / "nodisk");  // no record, no overlay: depends on nothing
  auto deps = dependants(d.path, tdir);
  std::sort(deps.begin(), deps.end());
  CHECK(deps == std::vector<std::string>{"crashed (its record unreadable)", "norecord (its record unreadable)"});
  CHECK(dependants(d.path, other) == std::vector<std::string>{"elsewhere (its record unreadable)"});
}

// A clone's record names its template's directory by the path the clone locked; `template rm` may
// be given another path to the same directory (a bind mount, a state directory reached two ways):
// still a dependant. A record copied with its directory is named by the directory it is in.
TEST_CASE("clone: a dependant is found by its template directory's identity, and named by its own directory") {
  TempDir d("vmm-clone-engine");
  const fs::path tdir = d.path / "templates" / "web";
  fs::create_directories(tdir);
  fs::create_symlink(tdir, d.path / "web-link");
  fs::create_directories(d.path / "clones" / "b");
  REQUIRE(write_clone_record(d.path / "clones" / "b",
                             CloneRecord{.name = "a", .template_dir = tdir.string(), .full = false, .pid = 1, .created = "now"}));
  CHECK(dependants(d.path, tdir) == std::vector<std::string>{"b"});
  CHECK(dependants(d.path, d.path / "web-link") == std::vector<std::string>{"b"});
  CHECK(dependants(d.path, d.path / "templates").empty());
  // The same directory under another mount (no path resolves one into the other).
  const fs::path bound = d.path / "web-bound";
  fs::create_directories(bound);
  if (::mount(tdir.c_str(), bound.c_str(), nullptr, MS_BIND, nullptr) == 0) {
    struct Unmount {
      fs::path p;
      ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
    } unmount{bound};
    CHECK(dependants(d.path, bound) == std::vector<std::string>{"b"});
  } else {
    MESSAGE("no bind mount here (not root?): the other-mount case is not checked");
  }
}

#include <sys/file.h>

#include <chrono>
#include <future>
#include <thread>

#include "template_samples.hpp"
#include "vmm/base/dir_lock.hpp"

namespace {

/// A template of the state directory `sdir` as far as its removal reads it: its manifest.
fs::path fake_template(const fs::path& sdir, const std::string& name) {
  const fs::path t = sdir / "templates" / name;
  fs::create_directories(t / "disks");
  auto m = template_test::sample_manifest(0, 0);
  m.name = name;
  std::ofstream(t / "manifest.json") << manifest_json(m);
  std::ofstream(t / "memory.bin") << "x";
  return t;
}

size_t entries(const fs::path& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

}  // namespace

// `vmm template rm` and a linked clone being made from the template: the clone holds the template
// shared from its reading until its record names the template (OpenTemplate::in_use). Until
// 2026-12-08 rm checked the clones' records and then removed the template by its path: a clone
// between its reading and its record was counted by nothing, and ran on overlays over deleted files.
TEST_CASE("template rm: refused while a clone is being made from it unless --force, and a clone that starts as it goes finds it gone") {
  TempDir d("vmm-clone-engine");
  const fs::path t = fake_template(d.path, "web");
  {
    auto starting = lock_dir(t, LOCK_SH);  // what open_template holds until the clone's record is written
    REQUIRE(starting);
    auto refused = remove_template(d.path, "web", /*force=*/false);
    REQUIRE(refused);
    CHECK(refused->status == exit_code::kUsage);
    CHECK(refused->message.find("a clone is being made from it") != std::string::npos);
    CHECK(fs::exists(t / "manifest.json"));
    CHECK_FALSE(remove_template(d.path, "web", /*force=*/true));  // --force: removed under it
    CHECK_FALSE(fs::exists(t));
    CHECK(entries(d.path / "templates") == 0);  // no tomb left
  }
  // A clone's start that comes while the removal holds the template waits for it, then finds it
  // gone (not a template half removed, nor another made under the name since).
  const fs::path t2 = fake_template(d.path, "db");
  auto removing = lock_dir(t2, LOCK_EX);
  REQUIRE(removing);
  CloneOptions o;
  o.template_name = "db";
  o.state_dir = d.path.string();
  auto start = std::async(std::launch::async, [&o] {
    OpenTemplate ot;
    return open_template(o, ot);
  });
  CHECK(start.wait_for(std::chrono::milliseconds(200)) == std::future_status::timeout);  // it waits
  fake_template(d.path, "db2");
  REQUIRE(bury(t2, removing->fd));
  fs::rename(d.path / "templates" / "db2", d.path / "templates" / "db");  // another "db" made since
  removing->fd.reset();
  const auto failure = start.get();
  REQUIRE(failure);
  CAPTURE(failure->message);
  CHECK(failure->message.find("removed as the clone started") != std::string::npos);
}

TEST_CASE("template rm: what an interrupted removal, draft or clone removal left is taken away, nothing else") {
  TempDir d("vmm-clone-engine");
  const fs::path templates = d.path / "templates";
  // A removal of an older vmm, killed after the manifest went: by name it goes; by path a directory
  // without a manifest is not a template, and stays.
  fs::create_directories(templates / "half");
  std::ofstream(templates / "half" / "state.bin") << "x";
  fs::create_directories(d.path / "mine");
  std::ofstream(d.path / "mine" / "keep") << "x";
  auto by_path = remove_template(d.path, (d.path / "mine").string(), /*force=*/true);
  REQUIRE(by_path);
  CHECK(by_path->status == exit_code::kImage);
  CHECK(fs::exists(d.path / "mine" / "keep"));
  CHECK_FALSE(remove_template(d.path, "half", false));
  CHECK_FALSE(fs::exists(templates / "half"));
  // Tombs and drafts: those of dead processes go, a held one stays, and so does a draft too young
  // to tell (between its mkdtemp and its lock), and anything that is neither.
  auto old = [](const fs::path& p) { fs::last_write_time(p, fs::file_time_type::clock::now() - std::chrono::minutes(5)); };
  for (const char* n : {".web.rm-12-0", ".a.rm-1.rm-3-9", ".held.rm-5-1", ".web.tmp-Ab12Cd", ".held.tmp-Zz99Yy", ".young.tmp-Qq11Ww",
                        ".web.rm-x-1", ".notes", "keep.rm-1-1"}) {
    fs::create_directories(templates / n / "disks");
    std::ofstream(templates / n / "memory.bin") << "x";
    if (std::string_view(n) != ".young.tmp-Qq11Ww") old(templates / n);
  }
  auto held_tomb = lock_dir(templates / ".held.rm-5-1", LOCK_EX);
  auto held_draft = lock_dir(templates / ".held.tmp-Zz99Yy", LOCK_EX);
  REQUIRE((held_tomb && held_draft));
  fake_template(d.path, "other");
  CHECK_FALSE(remove_template(d.path, "other", false));
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(templates)) left.push_back(e.path().filename().string());
  std::ranges::sort(left);
  CHECK(left == std::vector<std::string>{".held.rm-5-1", ".held.tmp-Zz99Yy", ".notes", ".web.rm-x-1", ".young.tmp-Qq11Ww", "keep.rm-1-1"});
  // begin_template sweeps the same way, once the holders are gone.
  held_tomb->fd.reset();
  held_draft->fd.reset();
  REQUIRE(begin_template(d.path.string(), "new"));
  left.clear();
  for (const auto& e : fs::directory_iterator(templates)) left.push_back(e.path().filename().string());
  std::ranges::sort(left);
  CHECK(left == std::vector<std::string>{".notes", ".web.rm-x-1", ".young.tmp-Qq11Ww", "keep.rm-1-1"});
  // A clone's tomb: skipped by dependants, taken away by the next clone removal.
  const fs::path tomb = d.path / "clones" / ".gone.rm-7-0";
  write_record(tomb, "gone", 4242);
  CHECK(dependants(d.path, d.path / "templates" / "web").empty());
  write_record(d.path / "clones" / "stopped", "stopped", 4242);
  REQUIRE(remove_clone(d.path, "stopped", RemoveRunning::Refuse));
  CHECK(fs::is_empty(d.path / "clones"));
}

// Two templates of one name written at once (two `vmm template create`, or one and a `vmm snapshot`):
// the second to finish is refused, the first left as it was.
TEST_CASE("template create: a template made under the same name while this one was written is not replaced") {
  TempDir d("vmm-clone-engine");
  auto first = begin_template(d.path.string(), "t");
  auto second = begin_template(d.path.string(), "t");
  REQUIRE((first && second));
  Manifest m;
  m.name = "t";
  m.memory = 4 << 20;
  REQUIRE(seal_template(**first, m));
  auto r = seal_template(**second, m);
  REQUIRE_FALSE(r);
  CHECK(r.error().message().find("already exists (made while this one was being written)") != std::string::npos);
  CHECK(fs::exists(d.path / "templates" / "t" / "manifest.json"));
  const fs::path tmp = (*second)->tmp;
  second->reset();
  CHECK_FALSE(fs::exists(tmp));
}

// A clone that fails to start removes its directory: the one it made, not another clone's that
// took the name after `vmm clone rm --force` removed its own as it started.
TEST_CASE("clone: a clone that fails to start removes the directory it made, and only that one") {
  TempDir d("vmm-clone-engine");
  const fs::path dir = d.path / "clones" / "c1";
  auto made = [&] {
    fs::create_directories(dir / "disk");
    std::ofstream(dir / "disk" / "disk0.qcow2") << "x";
    struct stat st {};
    REQUIRE(::stat(dir.c_str(), &st) == 0);
    return std::pair<uint64_t, uint64_t>{st.st_dev, st.st_ino};
  };
  {
    PreparedClone c;
    c.dir = dir;
    c.dir_id = made();
  }
  CHECK_FALSE(fs::exists(dir));
  CHECK(fs::is_empty(d.path / "clones"));
  {
    PreparedClone c;
    c.dir = dir;
    c.dir_id = made();
    fs::rename(dir, d.path / "clones" / "moved");  // (keeps the inode busy: a new one differs)
    made();                                        // another clone's, under the name since
  }
  CHECK(fs::exists(dir / "disk" / "disk0.qcow2"));
}

// A template given by a path may be a symbolic link to one (`--clone-of /srv/current`): a clone
// takes its lock through the link, and `template rm` of the link removes the template it names.
TEST_CASE("template rm: a template given through a symbolic link is locked and removed as the template it names") {
  TempDir d("vmm-clone-engine");
  const fs::path t = fake_template(d.path, "web");
  const fs::path link = d.path / "current";
  fs::create_directory_symlink(t, link);
  {
    CloneOptions o;
    o.template_name = link.string();
    o.state_dir = d.path.string();
    OpenTemplate ot;
    const auto failure = open_template(o, ot);  // the sample's files are not a real template
    REQUIRE(failure);
    CAPTURE(failure->message);
    CHECK(failure->message.find("symbolic link") == std::string::npos);
    CHECK(failure->message.find("removed as the clone started") == std::string::npos);
  }
  auto held = lock_dir(link, LOCK_SH, /*follow=*/true);  // a clone starting through the link
  REQUIRE(held);
  auto refused = remove_template(d.path, link.string(), false);
  REQUIRE(refused);
  CHECK(refused->message.find("a clone is being made from it") != std::string::npos);
  held->fd.reset();
  CHECK_FALSE(remove_template(d.path, link.string(), false));
  CHECK_FALSE(fs::exists(t));
  CHECK(fs::is_symlink(link));  // left dangling, as a removed target leaves any link to it
}
