// SPDX-License-Identifier: Apache-2.0
#include "common.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>

namespace nodemesh {

AddonData* GetData(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

std::string ErrnoName(int err) {
  if (err == 524) return "ENOTSUPP";  // kernel-internal, leaks out of bpf()
  // libbpf's own error numbers (LIBBPF_ERRNO__*), e.g. a file that is not BPF ELF.
  static const char* kLibbpf[] = {"LIBBPF_ELF",     "LIBBPF_FORMAT", "LIBBPF_KVERSION", "LIBBPF_ENDIAN",
                                  "LIBBPF_INTERNAL", "LIBBPF_RELOC",  "LIBBPF_LOAD",     "LIBBPF_VERIFY",
                                  "LIBBPF_PROG2BIG", "LIBBPF_KVER",   "LIBBPF_PROGTYPE", "LIBBPF_WRNGPID",
                                  "LIBBPF_INVSEQ",   "LIBBPF_NLPARSE"};
  if (err >= 4000 && err < 4000 + static_cast<int>(sizeof(kLibbpf) / sizeof(kLibbpf[0]))) return kLibbpf[err - 4000];
  const char* name = strerrorname_np(err);
  if (name != nullptr) return name;
  return "E" + std::to_string(err);
}

Napi::Value ThrowBpf(Napi::Env env, const char* op, int err,
                     const std::string& detail, const std::string& log) {
  if (err < 0) err = -err;
  std::string code = ErrnoName(err);
  std::string msg = std::string(op) + ": " + detail + ": " + code;
  if (err >= 4000) {
    char buf[128];
    libbpf_strerror(err, buf, sizeof(buf));
    msg += " (" + std::string(buf) + ")";
  } else if (err != 0) {
    msg += " (" + std::string(strerror(err)) + ")";
  }
  Napi::Error e = Napi::Error::New(env, msg);
  Napi::Object o = e.Value();
  o.Set("op", op);
  o.Set("errno", err);
  o.Set("code", code);
  o.Set("detail", detail);
  if (!log.empty()) o.Set("log", log);
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

// libbpf's log -------------------------------------------------------------------

namespace {
std::mutex g_log_mu;
std::string g_log;
bool g_capturing = false;
bool g_debug = false;
constexpr size_t kLogCap = 256 * 1024;

int PrintFn(enum libbpf_print_level level, const char* fmt, va_list args) {
  if (level == LIBBPF_DEBUG && !g_debug) return 0;
  va_list copy;
  va_copy(copy, args);
  int n = vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  if (n <= 0) return 0;
  std::string line(static_cast<size_t>(n) + 1, '\0');
  vsnprintf(line.data(), line.size(), fmt, args);
  line.resize(static_cast<size_t>(n));
  if (g_debug) fputs(line.c_str(), stderr);
  std::lock_guard<std::mutex> lock(g_log_mu);
  if (!g_capturing) return 0;
  g_log += line;
  // Keep the tail: the verifier's verdict is at the end of its log.
  if (g_log.size() > kLogCap) g_log.erase(0, g_log.size() - kLogCap);
  return 0;
}
}  // namespace

void InstallLibbpfLog() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* dbg = getenv("NODEMESH_LIBBPF_DEBUG");
    g_debug = dbg != nullptr && dbg[0] != '\0' && dbg[0] != '0';
    libbpf_set_print(PrintFn);
  });
}

void LogBegin() {
  std::lock_guard<std::mutex> lock(g_log_mu);
  g_log.clear();
  g_capturing = true;
}

std::string LogTake() {
  std::lock_guard<std::mutex> lock(g_log_mu);
  g_capturing = false;
  std::string out;
  out.swap(g_log);
  return out;
}

// Arguments ---------------------------------------------------------------------

bool ArgString(const Napi::CallbackInfo& info, size_t i, const char* op,
               const char* what, std::string* out) {
  if (info.Length() <= i || !info[i].IsString()) {
    ThrowBpf(info.Env(), op, EINVAL, std::string(what) + " must be a string");
    return false;
  }
  *out = info[i].As<Napi::String>().Utf8Value();
  return true;
}

bool ArgBuffer(const Napi::CallbackInfo& info, size_t i, const char* op,
               const char* what, uint8_t** data, size_t* len) {
  if (info.Length() <= i || !info[i].IsBuffer()) {
    ThrowBpf(info.Env(), op, EINVAL, std::string(what) + " must be a Buffer");
    return false;
  }
  auto b = info[i].As<Napi::Buffer<uint8_t>>();
  *data = b.Data();
  *len = b.Length();
  return true;
}

bool ArgU32(const Napi::CallbackInfo& info, size_t i, const char* op,
            const char* what, uint32_t* out) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    ThrowBpf(info.Env(), op, EINVAL, std::string(what) + " must be a number");
    return false;
  }
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (d < 0 || d > 4294967295.0 || d != static_cast<double>(static_cast<uint32_t>(d))) {
    ThrowBpf(info.Env(), op, EINVAL, std::string(what) + " must be an unsigned 32-bit integer");
    return false;
  }
  *out = static_cast<uint32_t>(d);
  return true;
}

std::string FdKind(int fd) {
  std::ifstream in("/proc/self/fdinfo/" + std::to_string(fd));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("map_type:", 0) == 0) return "map";
    if (line.rfind("prog_type:", 0) == 0) return "prog";
    if (line.rfind("link_type:", 0) == 0) return "link";
  }
  return "";
}

int OpenPinnedFd(Napi::Env env, const std::string& path, const char* kind, const char* op) {
  int fd = bpf_obj_get(path.c_str());
  if (fd < 0) {
    ThrowBpf(env, op, errno, std::string("open pinned ") + kind + " " + path);
    return -1;
  }
  std::string got = FdKind(fd);
  if (got != kind) {
    close(fd);
    ThrowBpf(env, op, EINVAL, path + " is a pinned " + (got.empty() ? "object" : got) + ", not a " + kind);
    return -1;
  }
  return fd;
}

bool PinFd(Napi::Env env, int fd, const std::string& path, const char* op, const std::string& what,
           std::string* pin_path) {
  if (bpf_obj_pin(fd, path.c_str()) != 0) {
    ThrowBpf(env, op, errno, "pin " + what + " at " + path);
    return false;
  }
  *pin_path = path;
  return true;
}

Napi::Value UnpinPath(Napi::Env env, std::string* pin_path, const char* op, const std::string& what) {
  if (pin_path->empty()) return Napi::Boolean::New(env, false);
  if (unlink(pin_path->c_str()) != 0 && errno != ENOENT)
    return ThrowBpf(env, op, errno, "unpin " + what + " at " + *pin_path);
  pin_path->clear();
  return Napi::Boolean::New(env, true);
}

}  // namespace nodemesh
