// SPDX-License-Identifier: Apache-2.0
// Object: one BPF object file, opened, configured, loaded. Owns its programs'
// fds; maps and links handed to JS are separate owners (dup'd or new fds).
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common.h"

namespace nodemesh {
namespace {

class Object : public Napi::ObjectWrap<Object> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Object",
                       {
                           InstanceMethod("load", &Object::Load),
                           InstanceMethod("close", &Object::CloseJs),
                           InstanceMethod("programs", &Object::Programs),
                           InstanceMethod("maps", &Object::Maps),
                           InstanceMethod("globalInfo", &Object::GlobalInfo),
                           InstanceMethod("setGlobal", &Object::SetGlobal),
                           InstanceMethod("btfStruct", &Object::BtfStruct),
                           InstanceMethod("btfEnum", &Object::BtfEnum),
                           InstanceMethod("openMap", &Object::OpenMap),
                           InstanceMethod("attachCgroup", &Object::AttachCgroup),
                           InstanceMethod("attachToMap", &Object::AttachToMap),
                           InstanceAccessor("loaded", &Object::Loaded, nullptr),
                           InstanceAccessor("closed", &Object::Closed, nullptr),
                       });
  }

  // new Object(path, pinRoot | null): opens (parses) the object file. Maps
  // marked LIBBPF_PIN_BY_NAME are reused from, or pinned at, <pinRoot>/<name>.
  explicit Object(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Object>(info) {
    Napi::Env env = info.Env();
    if (!ArgString(info, 0, "object_open", "object path", &path_)) return;
    std::string pin_root;
    if (info.Length() > 1 && info[1].IsString()) pin_root = info[1].As<Napi::String>().Utf8Value();

    LIBBPF_OPTS(bpf_object_open_opts, opts);
    if (!pin_root.empty()) opts.pin_root_path = pin_root.c_str();
    LogBegin();
    obj_ = bpf_object__open_file(path_.c_str(), &opts);
    int err = obj_ == nullptr ? errno : 0;
    std::string log = LogTake();
    if (obj_ == nullptr) {
      ThrowBpf(env, "object_open", err, "open " + path_, log);
      return;
    }
    if (pin_root.empty()) {
      // No pin root: nothing is pinned (libbpf would default to /sys/fs/bpf).
      bpf_map* m;
      bpf_object__for_each_map(m, obj_) bpf_map__set_pin_path(m, nullptr);
    }
    cleanup_.Arm(env, &Object::OnEnvCleanup, this);
  }

  ~Object() override { Close(); }

  // fd of a loaded program, or -1 after throwing.
  int ProgramFd(Napi::Env env, const std::string& name, const char* op) {
    if (!Usable(env, op)) return -1;
    if (!loaded_) {
      ThrowBpf(env, op, EINVAL, "object " + path_ + " is not loaded yet: call load() first");
      return -1;
    }
    bpf_program* prog = bpf_object__find_program_by_name(obj_, name.c_str());
    if (prog == nullptr) {
      ThrowBpf(env, op, ENOENT, "no program named " + name + " in " + path_);
      return -1;
    }
    int fd = bpf_program__fd(prog);
    if (fd < 0) {
      ThrowBpf(env, op, EBADF, "program " + name + " in " + path_ + " was not loaded (autoload off)");
      return -1;
    }
    return fd;
  }

 private:
  static void OnEnvCleanup(void* arg) {
    auto* self = static_cast<Object*>(arg);
    self->cleanup_.Fired();
    self->Close();
  }

  void Close() {
    if (obj_ != nullptr) bpf_object__close(obj_);
    obj_ = nullptr;
    cleanup_.Disarm();
  }

  bool Usable(Napi::Env env, const char* op) {
    if (obj_ != nullptr) return true;
    ThrowBpf(env, op, EBADF, "object " + path_ + " is closed");
    return false;
  }

  Napi::Value Loaded(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), loaded_); }
  Napi::Value Closed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), obj_ == nullptr); }

  Napi::Value CloseJs(const Napi::CallbackInfo& info) {
    Close();
    return info.Env().Undefined();
  }

  Napi::Value Load(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Usable(env, "object_load")) return env.Undefined();
    if (loaded_) return ThrowBpf(env, "object_load", EALREADY, "object " + path_ + " is already loaded");
    LogBegin();
    int err = bpf_object__load(obj_);
    std::string log = LogTake();
    if (err != 0) return ThrowBpf(env, "object_load", err, "load " + path_, log);
    loaded_ = true;
    return env.Undefined();
  }

  Napi::Value Programs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Usable(env, "object_programs")) return env.Undefined();
    Napi::Array out = Napi::Array::New(env);
    uint32_t i = 0;
    bpf_program* prog;
    bpf_object__for_each_program(prog, obj_) {
      Napi::Object p = Napi::Object::New(env);
      p.Set("name", bpf_program__name(prog));
      p.Set("section", bpf_program__section_name(prog));
      const char* type = libbpf_bpf_prog_type_str(bpf_program__type(prog));
      p.Set("type", type != nullptr ? type : "unknown");
      const char* at = libbpf_bpf_attach_type_str(bpf_program__expected_attach_type(prog));
      p.Set("attachType", at != nullptr ? at : "unknown");
      p.Set("loaded", bpf_program__fd(prog) >= 0);
      out.Set(i++, p);
    }
    return out;
  }

  Napi::Value Maps(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Usable(env, "object_maps")) return env.Undefined();
    Napi::Array out = Napi::Array::New(env);
    uint32_t i = 0;
    bpf_map* map;
    bpf_object__for_each_map(map, obj_) {
      Napi::Object m = Napi::Object::New(env);
      m.Set("name", bpf_map__name(map));
      const char* type = libbpf_bpf_map_type_str(bpf_map__type(map));
      m.Set("type", type != nullptr ? type : "unknown");
      m.Set("keySize", bpf_map__key_size(map));
      m.Set("valueSize", bpf_map__value_size(map));
      m.Set("maxEntries", bpf_map__max_entries(map));
      const char* pin = bpf_map__pin_path(map);
      if (pin != nullptr) m.Set("pinPath", pin);
      m.Set("pinned", bpf_map__is_pinned(map));
      m.Set("internal", bpf_map__is_internal(map));
      out.Set(i++, m);
    }
    return out;
  }

  // Finds a global variable in .rodata/.data/.bss through BTF.
  bool FindGlobal(const std::string& name, bpf_map** map_out, uint32_t* off, uint32_t* size,
                  const char** section) {
    btf* b = bpf_object__btf(obj_);
    if (b == nullptr) return false;
    static const char* kSections[] = {".rodata", ".data", ".bss"};
    for (const char* sec : kSections) {
      int id = btf__find_by_name_kind(b, sec, BTF_KIND_DATASEC);
      if (id < 0) continue;
      const btf_type* t = btf__type_by_id(b, id);
      const btf_var_secinfo* vsi = btf_var_secinfos(t);
      for (uint16_t i = 0; i < btf_vlen(t); i++, vsi++) {
        const btf_type* var = btf__type_by_id(b, vsi->type);
        if (name != btf__name_by_offset(b, var->name_off)) continue;
        bpf_map* m = nullptr;
        bpf_map* it;
        bpf_object__for_each_map(it, obj_) {
          if (!bpf_map__is_internal(it)) continue;
          const char* n = bpf_map__name(it);
          size_t nl = strlen(n), sl = strlen(sec);
          if (nl >= sl && strcmp(n + nl - sl, sec) == 0) m = it;
        }
        if (m == nullptr) return false;
        *map_out = m;
        *off = vsi->offset;
        *size = vsi->size;
        *section = sec;
        return true;
      }
    }
    return false;
  }

  Napi::Value GlobalInfo(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string name;
    if (!ArgString(info, 0, "object_global", "global name", &name)) return env.Undefined();
    if (!Usable(env, "object_global")) return env.Undefined();
    bpf_map* m;
    uint32_t off, size;
    const char* sec;
    if (!FindGlobal(name, &m, &off, &size, &sec)) return env.Null();
    Napi::Object o = Napi::Object::New(env);
    o.Set("size", size);
    o.Set("offset", off);
    o.Set("section", sec);
    return o;
  }

  // setGlobal(name, bytes): sets a `const volatile` (or other global) before load.
  Napi::Value SetGlobal(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string name;
    uint8_t* data;
    size_t len;
    if (!ArgString(info, 0, "object_global", "global name", &name)) return env.Undefined();
    if (!ArgBuffer(info, 1, "object_global", "global value", &data, &len)) return env.Undefined();
    if (!Usable(env, "object_global")) return env.Undefined();
    if (loaded_)
      return ThrowBpf(env, "object_global", EBUSY,
                      "global " + name + " must be set before load(); the object is loaded");
    bpf_map* m;
    uint32_t off, size;
    const char* sec;
    if (!FindGlobal(name, &m, &off, &size, &sec))
      return ThrowBpf(env, "object_global", ENOENT, "no global variable " + name + " in " + path_);
    if (len != size)
      return ThrowBpf(env, "object_global", EINVAL,
                      "global " + name + " is " + std::to_string(size) + " bytes, value is " +
                          std::to_string(len));
    size_t total = 0;
    void* base = const_cast<void*>(bpf_map__initial_value(m, &total));
    if (base == nullptr || off + size > total)
      return ThrowBpf(env, "object_global", EFAULT, "section " + std::string(sec) + " has no data for " + name);
    memcpy(static_cast<uint8_t*>(base) + off, data, size);
    return env.Undefined();
  }

  // btfStruct(name): {size, members: [{name, offset, size}]} from the object's BTF.
  Napi::Value BtfStruct(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string name;
    if (!ArgString(info, 0, "object_btf", "struct name", &name)) return env.Undefined();
    if (!Usable(env, "object_btf")) return env.Undefined();
    btf* b = bpf_object__btf(obj_);
    if (b == nullptr) return ThrowBpf(env, "object_btf", ENODATA, path_ + " has no BTF (build with clang -g)");
    int id = btf__find_by_name_kind(b, name.c_str(), BTF_KIND_STRUCT);
    if (id < 0) return env.Null();
    const btf_type* t = btf__type_by_id(b, id);
    Napi::Object o = Napi::Object::New(env);
    o.Set("size", t->size);
    Napi::Array members = Napi::Array::New(env);
    const btf_member* m = btf_members(t);
    for (uint16_t i = 0; i < btf_vlen(t); i++, m++) {
      Napi::Object mo = Napi::Object::New(env);
      mo.Set("name", btf__name_by_offset(b, m->name_off));
      mo.Set("offset", btf_member_bit_offset(t, i) / 8);
      mo.Set("size", static_cast<double>(btf__resolve_size(b, m->type)));
      members.Set(i, mo);
    }
    o.Set("members", members);
    return o;
  }

  // btfEnum(name): {NAME: value} of an enum in the object's BTF, or null.
  Napi::Value BtfEnum(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string name;
    if (!ArgString(info, 0, "object_btf", "enum name", &name)) return env.Undefined();
    if (!Usable(env, "object_btf")) return env.Undefined();
    btf* b = bpf_object__btf(obj_);
    if (b == nullptr) return ThrowBpf(env, "object_btf", ENODATA, path_ + " has no BTF (build with clang -g)");
    int id = btf__find_by_name_kind(b, name.c_str(), BTF_KIND_ENUM);
    if (id < 0) return env.Null();
    const btf_type* t = btf__type_by_id(b, id);
    Napi::Object o = Napi::Object::New(env);
    const struct btf_enum* e = btf_enum(t);
    for (uint16_t i = 0; i < btf_vlen(t); i++, e++) o.Set(btf__name_by_offset(b, e->name_off), e->val);
    return o;
  }

  // openMap(name): a Map owning a dup of the map's fd.
  Napi::Value OpenMap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string name;
    if (!ArgString(info, 0, "map_open", "map name", &name)) return env.Undefined();
    if (!Usable(env, "map_open")) return env.Undefined();
    bpf_map* m = bpf_object__find_map_by_name(obj_, name.c_str());
    if (m == nullptr) return ThrowBpf(env, "map_open", ENOENT, "no map named " + name + " in " + path_);
    int fd = bpf_map__fd(m);
    if (fd < 0) return ThrowBpf(env, "map_open", EBADF, "map " + name + " has no fd yet: call load() first");
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (dup_fd < 0) return ThrowBpf(env, "map_open", errno, "dup fd of map " + name);
    const char* pin = bpf_map__pin_path(m);
    return NewMap(env, dup_fd, pin != nullptr && bpf_map__is_pinned(m) ? pin : "");
  }

  // attachCgroup(program, cgroupPath): a Link (bpf_link) of the program to a cgroup v2 dir.
  Napi::Value AttachCgroup(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string name, cg;
    if (!ArgString(info, 0, "link_attach", "program name", &name)) return env.Undefined();
    if (!ArgString(info, 1, "link_attach", "cgroup path", &cg)) return env.Undefined();
    int prog_fd = ProgramFd(env, name, "link_attach");
    if (prog_fd < 0) return env.Undefined();
    bpf_program* prog = bpf_object__find_program_by_name(obj_, name.c_str());
    int cg_fd = open(cg.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cg_fd < 0) return ThrowBpf(env, "link_attach", errno, "open cgroup " + cg);
    LogBegin();
    int link_fd = bpf_link_create(prog_fd, cg_fd, bpf_program__expected_attach_type(prog), nullptr);
    int err = link_fd < 0 ? errno : 0;
    std::string log = LogTake();
    close(cg_fd);
    if (link_fd < 0) return ThrowBpf(env, "link_attach", err, "attach " + name + " to " + cg, log);
    return NewLink(env, link_fd, "");
  }

  // attachToMap(program, map): attaches an sk_skb/sk_msg program to one of the
  // object's sockmaps (bpf_prog_attach; its attach type from the section).
  // The map holds the program from then on: no link, nothing to pin, and it
  // is detached when the map is freed.
  Napi::Value AttachToMap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string name, map_name;
    if (!ArgString(info, 0, "map_attach", "program name", &name)) return env.Undefined();
    if (!ArgString(info, 1, "map_attach", "map name", &map_name)) return env.Undefined();
    int prog_fd = ProgramFd(env, name, "map_attach");
    if (prog_fd < 0) return env.Undefined();
    bpf_program* prog = bpf_object__find_program_by_name(obj_, name.c_str());
    bpf_map* map = bpf_object__find_map_by_name(obj_, map_name.c_str());
    if (map == nullptr) return ThrowBpf(env, "map_attach", ENOENT, "no map " + map_name + " in " + path_);
    LogBegin();
    int rc = bpf_prog_attach(prog_fd, bpf_map__fd(map), bpf_program__expected_attach_type(prog), 0);
    int err = rc != 0 ? errno : 0;
    std::string log = LogTake();
    if (rc != 0) return ThrowBpf(env, "map_attach", err, "attach " + name + " to map " + map_name, log);
    return env.Undefined();
  }

  std::string path_;
  bpf_object* obj_ = nullptr;
  bool loaded_ = false;
  CleanupHook cleanup_;
};

}  // namespace


int ProgramFdOf(Napi::Env env, Napi::Value v, const std::string& name, const char* op) {
  AddonData* d = GetData(env);
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(d->object_ctor.Value())) {
    ThrowBpf(env, op, EINVAL, "expected a loaded BPF object");
    return -1;
  }
  return Object::Unwrap(v.As<Napi::Object>())->ProgramFd(env, name, op);
}

void InitObject(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = Object::Define(env);
  GetData(env)->object_ctor = Napi::Persistent(ctor);
  exports.Set("Object", ctor);
}

}  // namespace nodemesh
