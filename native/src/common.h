// SPDX-License-Identifier: Apache-2.0
// Shared plumbing of the libbpf addon: errors, the libbpf log, argument checks,
// ownership of file descriptors and env cleanup hooks.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace nodemesh {

// Per-env data: constructors of the wrapped classes, so C++ can make instances.
struct AddonData {
  Napi::FunctionReference object_ctor;
  Napi::FunctionReference map_ctor;
  Napi::FunctionReference link_ctor;
  Napi::FunctionReference ringbuf_ctor;
};

AddonData* GetData(Napi::Env env);

// Errors ----------------------------------------------------------------------

// Name of an errno value ("EPERM"), or "E<number>" when unknown.
std::string ErrnoName(int err);

// Throws an Error carrying {op, errno, code, detail, log}. The TypeScript side
// turns it into a BpfError with a hint. Returns undefined for `return Throw…`.
Napi::Value ThrowBpf(Napi::Env env, const char* op, int err,
                     const std::string& detail, const std::string& log = "");

// libbpf's log ----------------------------------------------------------------

// Installs the libbpf print callback (once per process).
void InstallLibbpfLog();
// Starts capturing what libbpf prints during one addon call.
void LogBegin();
// Returns what was captured since LogBegin() and stops capturing.
std::string LogTake();

// Arguments -------------------------------------------------------------------

bool ArgString(const Napi::CallbackInfo& info, size_t i, const char* op,
               const char* what, std::string* out);
bool ArgBuffer(const Napi::CallbackInfo& info, size_t i, const char* op,
               const char* what, uint8_t** data, size_t* len);
bool ArgU32(const Napi::CallbackInfo& info, size_t i, const char* op,
            const char* what, uint32_t* out);

// Kind of BPF object behind an fd, read from /proc/self/fdinfo: "map", "prog",
// "link" or "" when it is not a BPF object.
std::string FdKind(int fd);

// Pins ------------------------------------------------------------------------------

// Opens what is pinned at `path`, which must be a `kind` ("map", "link").
// Returns the fd, or -1 after throwing.
int OpenPinnedFd(Napi::Env env, const std::string& path, const char* kind, const char* op);
// Pins fd at path and records it in *pin_path. False after throwing.
bool PinFd(Napi::Env env, int fd, const std::string& path, const char* op, const std::string& what,
           std::string* pin_path);
// Removes the pin at *pin_path (if any) and clears it. Returns whether there was
// one; undefined after throwing.
Napi::Value UnpinPath(Napi::Env env, std::string* pin_path, const char* op, const std::string& what);

// Ownership ---------------------------------------------------------------------

// Registers an env cleanup hook for one owner of kernel objects and removes it
// again when the owner closes first. Env teardown closes whatever JS left open.
class CleanupHook {
 public:
  void Arm(napi_env env, void (*fn)(void*), void* arg) {
    env_ = env;
    fn_ = fn;
    arg_ = arg;
    armed_ = napi_add_env_cleanup_hook(env, fn, arg) == napi_ok;
  }
  void Disarm() {
    if (armed_) napi_remove_env_cleanup_hook(env_, fn_, arg_);
    armed_ = false;
  }
  // The hook ran: Node removed it itself.
  void Fired() { armed_ = false; }

 private:
  napi_env env_ = nullptr;
  void (*fn_)(void*) = nullptr;
  void* arg_ = nullptr;
  bool armed_ = false;
};

// Handed from C++ to a wrapped class's JS constructor so that only the addon
// can make instances around an fd it owns.
struct FdToken {
  int fd;
  std::string pin_path;
};

void InitObject(Napi::Env env, Napi::Object exports);
void InitMap(Napi::Env env, Napi::Object exports);
void InitLink(Napi::Env env, Napi::Object exports);
void InitRingBuffer(Napi::Env env, Napi::Object exports);
void InitHelpers(Napi::Env env, Napi::Object exports);
void InitDelivery(Napi::Env env, Napi::Object exports);

// Makes a Map instance owning fd (closed on failure).
Napi::Value NewMap(Napi::Env env, int fd, const std::string& pin_path);
// Makes a Link instance owning fd (closed on failure).
Napi::Value NewLink(Napi::Env env, int fd, const std::string& pin_path);
// fd of a Map instance, or -1 after throwing.
int MapFdOf(Napi::Env env, Napi::Value v, const char* op);
// fd of program `name` in an Object instance, or -1 after throwing.
int ProgramFdOf(Napi::Env env, Napi::Value obj, const std::string& name, const char* op);

}  // namespace nodemesh
