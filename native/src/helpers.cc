// SPDX-License-Identifier: Apache-2.0
// Free functions: ids and cookies the data path keys on, feature probes, versions.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <malloc.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "common.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

namespace nodemesh {
namespace {

// cgroupId(path) -> bigint: the id the kernel reports from bpf_get_current_cgroup_id().
Napi::Value CgroupId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  if (!ArgString(info, 0, "cgroup_id", "cgroup path", &path)) return env.Undefined();
  struct {
    file_handle fh;
    uint64_t id;
  } h;
  h.fh.handle_bytes = sizeof(uint64_t);
  int mount_id;
  if (name_to_handle_at(AT_FDCWD, path.c_str(), &h.fh, &mount_id, 0) != 0)
    return ThrowBpf(env, "cgroup_id", errno, "read cgroup id of " + path);
  uint64_t id;
  memcpy(&id, h.fh.f_handle, sizeof(id));
  return Napi::BigInt::New(env, id);
}

// socketCookie(fd) -> bigint: the socket cookie (SO_COOKIE) the BPF programs key on.
Napi::Value SocketCookie(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t fd;
  if (!ArgU32(info, 0, "socket_cookie", "socket fd", &fd)) return env.Undefined();
  uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  if (getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0)
    return ThrowBpf(env, "socket_cookie", errno, "read SO_COOKIE of fd " + std::to_string(fd));
  return Napi::BigInt::New(env, cookie);
}

// tcpQueued(fd) -> bigint: every byte ever put on this TCP socket's send
// queue, by anyone (the process's writes and the fast path's redirects):
// acknowledged (tcpi_bytes_acked) plus still queued (SIOCOUTQ). The fast path
// waits on it before a shutdown, so a FIN never overtakes the kernel's copy.
Napi::Value TcpQueued(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t fd;
  if (!ArgU32(info, 0, "tcp_queued", "socket fd", &fd)) return env.Undefined();
  struct tcp_info ti;
  memset(&ti, 0, sizeof(ti));
  socklen_t len = sizeof(ti);
  if (getsockopt(static_cast<int>(fd), IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
    return ThrowBpf(env, "tcp_queued", errno, "read TCP_INFO of fd " + std::to_string(fd));
  if (len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof(ti.tcpi_bytes_acked))
    return ThrowBpf(env, "tcp_queued", ENOTSUP, "this kernel's TCP_INFO has no tcpi_bytes_acked (Linux 4.1+)");
  int outq = 0;
  if (ioctl(static_cast<int>(fd), SIOCOUTQ, &outq) != 0)
    return ThrowBpf(env, "tcp_queued", errno, "read SIOCOUTQ of fd " + std::to_string(fd));
  return Napi::BigInt::New(env, static_cast<uint64_t>(ti.tcpi_bytes_acked) + static_cast<uint64_t>(outq));
}

// kickReceive(fd): runs the socket's data-ready callback once if data waits
// in its receive queue. Setting SO_RCVLOWAT to its own value does that
// (tcp_set_rcvlowat), and that callback is the fast path's once the socket
// is in a sockmap: bytes that arrived before the socket joined it are sent
// on instead of waiting for the next segment.
Napi::Value KickReceive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t fd;
  if (!ArgU32(info, 0, "kick_receive", "socket fd", &fd)) return env.Undefined();
  int lowat = 1;
  socklen_t len = sizeof(lowat);
  if (getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_RCVLOWAT, &lowat, &len) != 0)
    return ThrowBpf(env, "kick_receive", errno, "read SO_RCVLOWAT of fd " + std::to_string(fd));
  if (setsockopt(static_cast<int>(fd), SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat)) != 0)
    return ThrowBpf(env, "kick_receive", errno, "set SO_RCVLOWAT of fd " + std::to_string(fd));
  return env.Undefined();
}

// recvInto(fd, buffer) -> n: one non-blocking recv(2) into the buffer: n > 0
// bytes, 0 at the end, -EAGAIN when nothing waits, another -errno on error.
// The fast path reads with it what the kernel passed up to a socket after
// the process saw that socket's end (see src/node-proxy/datapath/fastpath.ts).
Napi::Value RecvInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t fd;
  if (!ArgU32(info, 0, "recv", "socket fd", &fd)) return env.Undefined();
  if (info.Length() < 2 || !info[1].IsBuffer()) return ThrowBpf(env, "recv", EINVAL, "the second argument must be a Buffer");
  auto buf = info[1].As<Napi::Buffer<uint8_t>>();
  ssize_t n = recv(static_cast<int>(fd), buf.Data(), buf.Length(), MSG_DONTWAIT);
  return Napi::Number::New(env, n >= 0 ? static_cast<double>(n) : -static_cast<double>(errno));
}

// Reads the netns cookie of a netns file. setns() only ever runs on a thread
// made for it, which ends right after, so no thread of Node's (main or pool)
// ever changes namespace.
class NetnsCookieWorker : public Napi::AsyncWorker {
 public:
  NetnsCookieWorker(Napi::Env env, std::string path)
      : Napi::AsyncWorker(env, "nodemesh:netnsCookie"), path_(std::move(path)), deferred_(env) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    std::thread t([this] {
      int nsfd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
      if (nsfd < 0) {
        err_ = errno;
        step_ = "open netns " + path_;
        return;
      }
      if (setns(nsfd, CLONE_NEWNET) != 0) {
        err_ = errno;
        step_ = "enter netns " + path_;
        close(nsfd);
        return;
      }
      close(nsfd);
      int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      if (s < 0) {
        err_ = errno;
        step_ = "socket in netns " + path_;
        return;
      }
      socklen_t len = sizeof(cookie_);
      if (getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &cookie_, &len) != 0) {
        err_ = errno;
        step_ = "read SO_NETNS_COOKIE in " + path_ + " (needs Linux 5.14+)";
      }
      close(s);
    });
    t.join();
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      ThrowBpf(env, "netns_cookie", err_, step_);
      Napi::Error e = env.GetAndClearPendingException();
      deferred_.Reject(e.Value());
      return;
    }
    deferred_.Resolve(Napi::BigInt::New(env, cookie_));
  }

 private:
  std::string path_;
  Napi::Promise::Deferred deferred_;
  int err_ = 0;
  std::string step_;
  uint64_t cookie_ = 0;
};

Napi::Value NetnsCookie(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  if (!ArgString(info, 0, "netns_cookie", "netns path", &path)) return env.Undefined();
  auto* w = new NetnsCookieWorker(env, path);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// probeProgType(name) / probeMapType(name) -> 1 supported, 0 not, <0 -errno.
// Names are libbpf's ("cgroup_sock_addr", "lru_hash").
Napi::Value ProbeProgType(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  if (!ArgString(info, 0, "probe", "program type", &name)) return env.Undefined();
  for (int t = 1;; t++) {
    const char* s = libbpf_bpf_prog_type_str(static_cast<bpf_prog_type>(t));
    if (s == nullptr) break;
    if (name == s) return Napi::Number::New(env, libbpf_probe_bpf_prog_type(static_cast<bpf_prog_type>(t), nullptr));
  }
  return ThrowBpf(env, "probe", EINVAL, "this libbpf knows no program type " + name);
}

Napi::Value ProbeMapType(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  if (!ArgString(info, 0, "probe", "map type", &name)) return env.Undefined();
  for (int t = 1;; t++) {
    const char* s = libbpf_bpf_map_type_str(static_cast<bpf_map_type>(t));
    if (s == nullptr) break;
    if (name == s) return Napi::Number::New(env, libbpf_probe_bpf_map_type(static_cast<bpf_map_type>(t), nullptr));
  }
  return ThrowBpf(env, "probe", EINVAL, "this libbpf knows no map type " + name);
}

// pinnedKind(path) -> "map" | "prog" | "link" | null (nothing pinned there)
Napi::Value PinnedKind(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  if (!ArgString(info, 0, "obj_get", "pin path", &path)) return env.Undefined();
  int fd = bpf_obj_get(path.c_str());
  if (fd < 0) {
    if (errno == ENOENT) return env.Null();
    return ThrowBpf(env, "obj_get", errno, "open pinned object " + path);
  }
  std::string kind = FdKind(fd);
  close(fd);
  return Napi::String::New(env, kind);
}

// bpfAccess() -> 0, or -errno when this process may not use bpf() (EPERM
// without CAP_BPF). libbpf's probes say only "no" in that case.
Napi::Value BpfAccess(const Napi::CallbackInfo& info) {
  int fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "nm_probe", 4, 4, 1, nullptr);
  if (fd < 0) return Napi::Number::New(info.Env(), -errno);
  close(fd);
  return Napi::Number::New(info.Env(), 0);
}

Napi::Value LibbpfVersion(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), std::to_string(libbpf_major_version()) + "." +
                                           std::to_string(libbpf_minor_version()));
}

Napi::Value NumPossibleCpus(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), libbpf_num_possible_cpus());
}

// mallocTrim() -> bool: hands malloc's free memory back to the kernel
// (glibc keeps what was freed in its arenas, so the TLS, HTTP/2 and socket
// buffers of connections long closed stay in RSS). Whether any was returned.
Napi::Value MallocTrim(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), malloc_trim(0) != 0);
}

}  // namespace

void InitHelpers(Napi::Env env, Napi::Object exports) {
  exports.Set("cgroupId", Napi::Function::New(env, CgroupId, "cgroupId"));
  exports.Set("socketCookie", Napi::Function::New(env, SocketCookie, "socketCookie"));
  exports.Set("tcpQueued", Napi::Function::New(env, TcpQueued, "tcpQueued"));
  exports.Set("recvInto", Napi::Function::New(env, RecvInto, "recvInto"));
  exports.Set("kickReceive", Napi::Function::New(env, KickReceive, "kickReceive"));
  exports.Set("netnsCookie", Napi::Function::New(env, NetnsCookie, "netnsCookie"));
  exports.Set("probeProgType", Napi::Function::New(env, ProbeProgType, "probeProgType"));
  exports.Set("probeMapType", Napi::Function::New(env, ProbeMapType, "probeMapType"));
  exports.Set("pinnedKind", Napi::Function::New(env, PinnedKind, "pinnedKind"));
  exports.Set("bpfAccess", Napi::Function::New(env, BpfAccess, "bpfAccess"));
  exports.Set("libbpfVersion", Napi::Function::New(env, LibbpfVersion, "libbpfVersion"));
  exports.Set("numPossibleCpus", Napi::Function::New(env, NumPossibleCpus, "numPossibleCpus"));
  exports.Set("mallocTrim", Napi::Function::New(env, MallocTrim, "mallocTrim"));
}

}  // namespace nodemesh
