// SPDX-License-Identifier: Apache-2.0
// Map: one owned fd of a BPF map. Keys and values are Buffers whose sizes the
// TypeScript side checks first; checked again here so a wrong size can never
// make the kernel read or write past a buffer.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "common.h"

namespace nodemesh {
namespace {

bool IsPerCpu(uint32_t type) {
  return type == BPF_MAP_TYPE_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_ARRAY ||
         type == BPF_MAP_TYPE_LRU_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE;
}

// Batch operations are missing for some map types (LPM trie, ring buffer...).
bool BatchUnsupported(int err) { return err == EINVAL || err == ENOTSUP || err == 524 /* ENOTSUPP */; }

class Map : public Napi::ObjectWrap<Map> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Map",
                       {
                           StaticMethod("openPinned", &Map::OpenPinned),
                           InstanceMethod("close", &Map::CloseJs),
                           InstanceMethod("info", &Map::Info),
                           InstanceMethod("lookup", &Map::Lookup),
                           InstanceMethod("lookupInto", &Map::LookupInto),
                           InstanceMethod("lookupAndDelete", &Map::LookupAndDelete),
                           InstanceMethod("update", &Map::Update),
                           InstanceMethod("delete", &Map::Delete),
                           InstanceMethod("nextKey", &Map::NextKey),
                           InstanceMethod("dump", &Map::Dump),
                           InstanceMethod("updateBatch", &Map::UpdateBatch),
                           InstanceMethod("deleteBatch", &Map::DeleteBatch),
                           InstanceMethod("pin", &Map::Pin),
                           InstanceMethod("unpin", &Map::Unpin),
                           InstanceAccessor("closed", &Map::Closed, nullptr),
                           InstanceAccessor("pinPath", &Map::PinPath, nullptr),
                       });
  }

  // Only the addon constructs maps: new Map(External<FdToken>).
  explicit Map(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Map>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsExternal()) {
      ThrowBpf(env, "map_open", EINVAL, "maps come from Object.openMap() or Map.openPinned()");
      return;
    }
    FdToken* tok = info[0].As<Napi::External<FdToken>>().Data();
    fd_ = tok->fd;
    pin_path_ = tok->pin_path;
    tok->fd = -1;  // ownership moved here
    memset(&info_, 0, sizeof(info_));
    uint32_t len = sizeof(info_);
    if (bpf_obj_get_info_by_fd(fd_, &info_, &len) != 0) {
      int err = errno;
      close(fd_);
      fd_ = -1;
      ThrowBpf(env, "map_info", err, "read map info");
      return;
    }
    per_cpu_ = IsPerCpu(info_.type);
    if (per_cpu_) {
      int ncpu = libbpf_num_possible_cpus();
      if (ncpu < 1) ncpu = 1;
      value_buf_size_ = ((info_.value_size + 7) / 8) * 8 * static_cast<uint32_t>(ncpu);
    } else {
      value_buf_size_ = info_.value_size;
    }
    cleanup_.Arm(env, &Map::OnEnvCleanup, this);
  }

  ~Map() override { Close(); }

  int Fd(Napi::Env env, const char* op) {
    if (fd_ >= 0) return fd_;
    ThrowBpf(env, op, EBADF, "map " + std::string(info_.name) + " is closed");
    return -1;
  }

 private:
  static void OnEnvCleanup(void* arg) {
    auto* self = static_cast<Map*>(arg);
    self->cleanup_.Fired();
    self->Close();
  }

  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    cleanup_.Disarm();
  }

  std::string Name() const { return info_.name; }

  bool CheckKey(Napi::Env env, const char* op, size_t len) {
    if (len == info_.key_size) return true;
    ThrowBpf(env, op, EINVAL,
             "map " + Name() + " has " + std::to_string(info_.key_size) + "-byte keys, got " +
                 std::to_string(len) + " bytes");
    return false;
  }

  bool CheckValue(Napi::Env env, const char* op, size_t len) {
    if (len == value_buf_size_) return true;
    ThrowBpf(env, op, EINVAL,
             "map " + Name() + " needs " + std::to_string(value_buf_size_) + "-byte values" +
                 (per_cpu_ ? " (per-CPU: 8-byte aligned value for each possible CPU)" : "") + ", got " +
                 std::to_string(len) + " bytes");
    return false;
  }

  static Napi::Value OpenPinned(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string path;
    if (!ArgString(info, 0, "map_open", "pin path", &path)) return env.Undefined();
    int fd = OpenPinnedFd(env, path, "map", "map_open");
    return fd < 0 ? env.Undefined() : NewMap(env, fd, path);
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

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("id", info_.id);
    o.Set("name", Name());
    const char* type = libbpf_bpf_map_type_str(static_cast<bpf_map_type>(info_.type));
    o.Set("type", type != nullptr ? type : "unknown");
    o.Set("keySize", info_.key_size);
    o.Set("valueSize", info_.value_size);
    o.Set("valueBufferSize", value_buf_size_);
    o.Set("maxEntries", info_.max_entries);
    o.Set("flags", info_.map_flags);
    o.Set("perCpu", per_cpu_);
    o.Set("possibleCpus", libbpf_num_possible_cpus());
    return o;
  }

  // lookup(key) -> Buffer | null
  Napi::Value Lookup(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint8_t* key;
    size_t klen;
    if (!ArgBuffer(info, 0, "map_lookup", "key", &key, &klen)) return env.Undefined();
    int fd = Fd(env, "map_lookup");
    if (fd < 0 || !CheckKey(env, "map_lookup", klen)) return env.Undefined();
    Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, value_buf_size_);
    if (bpf_map_lookup_elem(fd, key, out.Data()) != 0) {
      if (errno == ENOENT) return env.Null();
      return ThrowBpf(env, "map_lookup", errno, "lookup in map " + Name());
    }
    return out;
  }

  // lookupInto(key, out) -> boolean: no allocation, for hot paths.
  Napi::Value LookupInto(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint8_t *key, *out;
    size_t klen, olen;
    if (!ArgBuffer(info, 0, "map_lookup", "key", &key, &klen)) return env.Undefined();
    if (!ArgBuffer(info, 1, "map_lookup", "value buffer", &out, &olen)) return env.Undefined();
    int fd = Fd(env, "map_lookup");
    if (fd < 0 || !CheckKey(env, "map_lookup", klen) || !CheckValue(env, "map_lookup", olen))
      return env.Undefined();
    if (bpf_map_lookup_elem(fd, key, out) != 0) {
      if (errno == ENOENT) return Napi::Boolean::New(env, false);
      return ThrowBpf(env, "map_lookup", errno, "lookup in map " + Name());
    }
    return Napi::Boolean::New(env, true);
  }

  Napi::Value LookupAndDelete(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint8_t* key;
    size_t klen;
    if (!ArgBuffer(info, 0, "map_lookup_and_delete", "key", &key, &klen)) return env.Undefined();
    int fd = Fd(env, "map_lookup_and_delete");
    if (fd < 0 || !CheckKey(env, "map_lookup_and_delete", klen)) return env.Undefined();
    Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, value_buf_size_);
    if (bpf_map_lookup_and_delete_elem(fd, key, out.Data()) != 0) {
      if (errno == ENOENT) return env.Null();
      return ThrowBpf(env, "map_lookup_and_delete", errno, "lookup and delete in map " + Name());
    }
    return out;
  }

  // update(key, value, flags)
  Napi::Value Update(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint8_t *key, *val;
    size_t klen, vlen;
    uint32_t flags = 0;
    if (!ArgBuffer(info, 0, "map_update", "key", &key, &klen)) return env.Undefined();
    if (!ArgBuffer(info, 1, "map_update", "value", &val, &vlen)) return env.Undefined();
    if (info.Length() > 2 && !ArgU32(info, 2, "map_update", "flags", &flags)) return env.Undefined();
    int fd = Fd(env, "map_update");
    if (fd < 0 || !CheckKey(env, "map_update", klen) || !CheckValue(env, "map_update", vlen))
      return env.Undefined();
    if (bpf_map_update_elem(fd, key, val, flags) != 0)
      return ThrowBpf(env, "map_update", errno, "update in map " + Name());
    return env.Undefined();
  }

  // delete(key) -> boolean (false when absent)
  Napi::Value Delete(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint8_t* key;
    size_t klen;
    if (!ArgBuffer(info, 0, "map_delete", "key", &key, &klen)) return env.Undefined();
    int fd = Fd(env, "map_delete");
    if (fd < 0 || !CheckKey(env, "map_delete", klen)) return env.Undefined();
    if (bpf_map_delete_elem(fd, key) != 0) {
      if (errno == ENOENT) return Napi::Boolean::New(env, false);
      return ThrowBpf(env, "map_delete", errno, "delete in map " + Name());
    }
    return Napi::Boolean::New(env, true);
  }

  // nextKey(key | null) -> Buffer | null (null at the end)
  Napi::Value NextKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint8_t* key = nullptr;
    size_t klen = info_.key_size;
    if (info.Length() > 0 && !info[0].IsNull() && !info[0].IsUndefined()) {
      if (!ArgBuffer(info, 0, "map_next_key", "key", &key, &klen)) return env.Undefined();
    }
    int fd = Fd(env, "map_next_key");
    if (fd < 0 || !CheckKey(env, "map_next_key", klen)) return env.Undefined();
    Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, info_.key_size);
    if (bpf_map_get_next_key(fd, key, out.Data()) != 0) {
      if (errno == ENOENT) return env.Null();
      return ThrowBpf(env, "map_next_key", errno, "iterate map " + Name());
    }
    return out;
  }

  // dump() -> {keys: Buffer, values: Buffer, count, batched}: every entry, in
  // batches where the kernel has them, else key by key.
  Napi::Value Dump(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Fd(env, "map_dump");
    if (fd < 0) return env.Undefined();
    const size_t ks = info_.key_size, vs = value_buf_size_;
    std::vector<uint8_t> keys, vals;
    size_t count = 0;
    bool batched = true;

    uint32_t chunk = 256;
    std::vector<uint8_t> in_tok(std::max<size_t>(ks, 8)), out_tok(std::max<size_t>(ks, 8));
    bool first = true;
    for (;;) {
      keys.resize((count + chunk) * ks);
      vals.resize((count + chunk) * vs);
      uint32_t n = chunk;
      LIBBPF_OPTS(bpf_map_batch_opts, opts);
      int rc = bpf_map_lookup_batch(fd, first ? nullptr : in_tok.data(), out_tok.data(), keys.data() + count * ks,
                                    vals.data() + count * vs, &n, &opts);
      int err = rc != 0 ? errno : 0;
      if (rc != 0 && err != ENOENT) {
        if (first && BatchUnsupported(err)) {
          batched = false;
          break;
        }
        if (err == ENOSPC && chunk < (1u << 20)) {  // a hash bucket larger than the chunk
          chunk *= 2;
          continue;
        }
        return ThrowBpf(env, "map_dump", err, "batch lookup in map " + Name());
      }
      count += n;
      first = false;
      if (err == ENOENT) break;
      in_tok.swap(out_tok);
    }

    if (!batched) {
      count = 0;
      std::vector<uint8_t> cur(ks), next(ks);
      bool have = false;
      for (;;) {
        if (bpf_map_get_next_key(fd, have ? cur.data() : nullptr, next.data()) != 0) {
          if (errno == ENOENT) break;
          return ThrowBpf(env, "map_dump", errno, "iterate map " + Name());
        }
        keys.resize((count + 1) * ks);
        vals.resize((count + 1) * vs);
        memcpy(keys.data() + count * ks, next.data(), ks);
        if (bpf_map_lookup_elem(fd, next.data(), vals.data() + count * vs) == 0) {
          count++;
        } else if (errno != ENOENT) {  // deleted while we walked: skip it
          return ThrowBpf(env, "map_dump", errno, "lookup in map " + Name());
        }
        cur.swap(next);
        have = true;
      }
    }

    Napi::Object o = Napi::Object::New(env);
    o.Set("keys", Napi::Buffer<uint8_t>::Copy(env, keys.data(), count * ks));
    o.Set("values", Napi::Buffer<uint8_t>::Copy(env, vals.data(), count * vs));
    o.Set("count", static_cast<double>(count));
    o.Set("batched", batched);
    return o;
  }

  // updateBatch(keys, values, count, flags) -> number updated. Falls back to
  // one update per entry where the kernel has no batch for this map type.
  Napi::Value UpdateBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint8_t *keys, *vals;
    size_t klen, vlen;
    uint32_t count, flags = 0;
    if (!ArgBuffer(info, 0, "map_update_batch", "keys", &keys, &klen)) return env.Undefined();
    if (!ArgBuffer(info, 1, "map_update_batch", "values", &vals, &vlen)) return env.Undefined();
    if (!ArgU32(info, 2, "map_update_batch", "count", &count)) return env.Undefined();
    if (info.Length() > 3 && !ArgU32(info, 3, "map_update_batch", "flags", &flags)) return env.Undefined();
    int fd = Fd(env, "map_update_batch");
    if (fd < 0) return env.Undefined();
    if (klen != static_cast<size_t>(count) * info_.key_size || vlen != static_cast<size_t>(count) * value_buf_size_)
      return ThrowBpf(env, "map_update_batch", EINVAL,
                      "map " + Name() + ": " + std::to_string(count) + " entries need " +
                          std::to_string(count * info_.key_size) + " key bytes and " +
                          std::to_string(count * value_buf_size_) + " value bytes");
    if (count == 0) return Napi::Number::New(env, 0);
    uint32_t n = count;
    LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = flags);
    if (bpf_map_update_batch(fd, keys, vals, &n, &opts) == 0) return Napi::Number::New(env, n);
    int err = errno;
    if (!BatchUnsupported(err) || n != 0)
      return ThrowBpf(env, "map_update_batch", err,
                      "batch update in map " + Name() + " (" + std::to_string(n) + " of " + std::to_string(count) +
                          " applied)");
    for (uint32_t i = 0; i < count; i++) {
      if (bpf_map_update_elem(fd, keys + i * info_.key_size, vals + i * value_buf_size_, flags) != 0)
        return ThrowBpf(env, "map_update_batch", errno,
                        "update in map " + Name() + " (" + std::to_string(i) + " of " + std::to_string(count) +
                            " applied)");
    }
    return Napi::Number::New(env, count);
  }

  // deleteBatch(keys, count) -> number deleted
  Napi::Value DeleteBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint8_t* keys;
    size_t klen;
    uint32_t count;
    if (!ArgBuffer(info, 0, "map_delete_batch", "keys", &keys, &klen)) return env.Undefined();
    if (!ArgU32(info, 1, "map_delete_batch", "count", &count)) return env.Undefined();
    int fd = Fd(env, "map_delete_batch");
    if (fd < 0) return env.Undefined();
    if (klen != static_cast<size_t>(count) * info_.key_size)
      return ThrowBpf(env, "map_delete_batch", EINVAL,
                      "map " + Name() + ": " + std::to_string(count) + " keys need " +
                          std::to_string(count * info_.key_size) + " bytes");
    if (count == 0) return Napi::Number::New(env, 0);
    uint32_t n = count;
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    if (bpf_map_delete_batch(fd, keys, &n, &opts) == 0) return Napi::Number::New(env, n);
    int err = errno;
    if (!BatchUnsupported(err) && err != ENOENT)
      return ThrowBpf(env, "map_delete_batch", err, "batch delete in map " + Name());
    // Absent keys stop a kernel batch; delete the rest one by one.
    uint32_t deleted = err == ENOENT ? n : 0;
    for (uint32_t i = deleted; i < count; i++) {
      if (bpf_map_delete_elem(fd, keys + i * info_.key_size) == 0) {
        deleted++;
      } else if (errno != ENOENT) {
        return ThrowBpf(env, "map_delete_batch", errno, "delete in map " + Name());
      }
    }
    return Napi::Number::New(env, deleted);
  }

  Napi::Value Pin(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string path;
    if (!ArgString(info, 0, "map_pin", "pin path", &path)) return env.Undefined();
    int fd = Fd(env, "map_pin");
    if (fd >= 0) PinFd(env, fd, path, "map_pin", "map " + Name(), &pin_path_);
    return env.Undefined();
  }

  // unpin(): removes the pin this map was opened from or pinned at.
  Napi::Value Unpin(const Napi::CallbackInfo& info) {
    return UnpinPath(info.Env(), &pin_path_, "map_unpin", "map " + Name());
  }

  int fd_ = -1;
  std::string pin_path_;
  bpf_map_info info_;
  bool per_cpu_ = false;
  uint32_t value_buf_size_ = 0;
  CleanupHook cleanup_;
};

}  // namespace

Napi::Value NewMap(Napi::Env env, int fd, const std::string& pin_path) {
  FdToken tok{fd, pin_path};
  Napi::Value v = GetData(env)->map_ctor.New({Napi::External<FdToken>::New(env, &tok)});
  if (tok.fd >= 0) close(tok.fd);  // the constructor did not take it
  return v;
}

int MapFdOf(Napi::Env env, Napi::Value v, const char* op) {
  AddonData* d = GetData(env);
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(d->map_ctor.Value())) {
    ThrowBpf(env, op, EINVAL, "expected a BPF map");
    return -1;
  }
  return Map::Unwrap(v.As<Napi::Object>())->Fd(env, op);
}

void InitMap(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = Map::Define(env);
  GetData(env)->map_ctor = Napi::Persistent(ctor);
  exports.Set("Map", ctor);
}

}  // namespace nodemesh
