// SPDX-License-Identifier: Apache-2.0
// Link: one owned fd of a bpf_link. Closing an unpinned link detaches its
// program; a pinned link stays attached until detach() or unpin + close.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common.h"

namespace nodemesh {
namespace {

class Link : public Napi::ObjectWrap<Link> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Link",
                       {
                           StaticMethod("openPinned", &Link::OpenPinned),
                           InstanceMethod("close", &Link::CloseJs),
                           InstanceMethod("info", &Link::Info),
                           InstanceMethod("pin", &Link::Pin),
                           InstanceMethod("unpin", &Link::Unpin),
                           InstanceMethod("update", &Link::Update),
                           InstanceMethod("detach", &Link::Detach),
                           InstanceAccessor("closed", &Link::Closed, nullptr),
                           InstanceAccessor("pinPath", &Link::PinPath, nullptr),
                       });
  }

  explicit Link(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Link>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsExternal()) {
      ThrowBpf(env, "link_open", EINVAL, "links come from Object.attachCgroup() or Link.openPinned()");
      return;
    }
    FdToken* tok = info[0].As<Napi::External<FdToken>>().Data();
    fd_ = tok->fd;
    pin_path_ = tok->pin_path;
    tok->fd = -1;
    cleanup_.Arm(env, &Link::OnEnvCleanup, this);
  }

  ~Link() override { Close(); }

 private:
  static void OnEnvCleanup(void* arg) {
    auto* self = static_cast<Link*>(arg);
    self->cleanup_.Fired();
    self->Close();
  }

  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    cleanup_.Disarm();
  }

  int Fd(Napi::Env env, const char* op) {
    if (fd_ >= 0) return fd_;
    ThrowBpf(env, op, EBADF, "link is closed");
    return -1;
  }

  static Napi::Value OpenPinned(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string path;
    if (!ArgString(info, 0, "link_open", "pin path", &path)) return env.Undefined();
    int fd = OpenPinnedFd(env, path, "link", "link_open");
    return fd < 0 ? env.Undefined() : NewLink(env, fd, path);
  }

  Napi::Value Closed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), fd_ < 0); }
  Napi::Value PinPath(const Napi::CallbackInfo& info) {
    if (pin_path_.empty()) return info.Env().Null();
    return Napi::String::New(info.Env(), pin_path_);
  }

  Napi::Value CloseJs(const Napi::CallbackInfo& info) {
    Close();
    return info.Env().Undefined();
  }

  // info() -> {id, progId, type, attachType?, cgroupId?, attached}
  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Fd(env, "link_info");
    if (fd < 0) return env.Undefined();
    bpf_link_info li;
    memset(&li, 0, sizeof(li));
    uint32_t len = sizeof(li);
    if (bpf_obj_get_info_by_fd(fd, &li, &len) != 0) return ThrowBpf(env, "link_info", errno, "read link info");
    Napi::Object o = Napi::Object::New(env);
    o.Set("id", li.id);
    o.Set("progId", li.prog_id);
    const char* type = libbpf_bpf_link_type_str(static_cast<bpf_link_type>(li.type));
    o.Set("type", type != nullptr ? type : "unknown");
    if (li.type == BPF_LINK_TYPE_CGROUP) {
      const char* at = libbpf_bpf_attach_type_str(static_cast<bpf_attach_type>(li.cgroup.attach_type));
      o.Set("attachType", at != nullptr ? at : "unknown");
      o.Set("cgroupId", Napi::BigInt::New(env, static_cast<uint64_t>(li.cgroup.cgroup_id)));
      // A detached cgroup link keeps its fd but reports cgroup id 0.
      o.Set("attached", li.cgroup.cgroup_id != 0);
    }
    return o;
  }

  Napi::Value Pin(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string path;
    if (!ArgString(info, 0, "link_pin", "pin path", &path)) return env.Undefined();
    int fd = Fd(env, "link_pin");
    if (fd >= 0) PinFd(env, fd, path, "link_pin", "link", &pin_path_);
    return env.Undefined();
  }

  Napi::Value Unpin(const Napi::CallbackInfo& info) {
    return UnpinPath(info.Env(), &pin_path_, "link_unpin", "link");
  }

  // update(object, programName): swaps the link's program atomically.
  Napi::Value Update(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string name;
    if (!ArgString(info, 1, "link_update", "program name", &name)) return env.Undefined();
    int fd = Fd(env, "link_update");
    if (fd < 0) return env.Undefined();
    int prog_fd = ProgramFdOf(env, info[0], name, "link_update");
    if (prog_fd < 0) return env.Undefined();
    if (bpf_link_update(fd, prog_fd, nullptr) != 0)
      return ThrowBpf(env, "link_update", errno, "update link to program " + name);
    return env.Undefined();
  }

  // detach(): detaches the program even while the link is pinned elsewhere.
  Napi::Value Detach(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Fd(env, "link_detach");
    if (fd < 0) return env.Undefined();
    if (bpf_link_detach(fd) != 0) return ThrowBpf(env, "link_detach", errno, "detach link");
    return env.Undefined();
  }

  int fd_ = -1;
  std::string pin_path_;
  CleanupHook cleanup_;
};

}  // namespace

Napi::Value NewLink(Napi::Env env, int fd, const std::string& pin_path) {
  FdToken tok{fd, pin_path};
  Napi::Value v = GetData(env)->link_ctor.New({Napi::External<FdToken>::New(env, &tok)});
  if (tok.fd >= 0) close(tok.fd);
  return v;
}

void InitLink(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = Link::Define(env);
  GetData(env)->link_ctor = Napi::Persistent(ctor);
  exports.Set("Link", ctor);
}

}  // namespace nodemesh
