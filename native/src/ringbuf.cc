// SPDX-License-Identifier: Apache-2.0
// RingBuffer: consumes a BPF ring buffer on Node's event loop. libuv polls the
// ring buffer's epoll fd; when it is readable, every waiting record is copied
// and handed to JS in one call. No thread, no busy loop.
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"

namespace nodemesh {
namespace {

class RingBuffer : public Napi::ObjectWrap<RingBuffer> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "RingBuffer",
                       {
                           InstanceMethod("close", &RingBuffer::CloseJs),
                           InstanceMethod("consume", &RingBuffer::ConsumeJs),
                           InstanceMethod("ref", &RingBuffer::Ref),
                           InstanceMethod("unref", &RingBuffer::Unref),
                           InstanceAccessor("closed", &RingBuffer::Closed, nullptr),
                       });
  }

  // new RingBuffer(map, callback(err, records[]))
  explicit RingBuffer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RingBuffer>(info) {
    Napi::Env env = info.Env();
    int map_fd = MapFdOf(env, info[0], "ringbuf_open");
    if (map_fd < 0) return;
    if (info.Length() < 2 || !info[1].IsFunction()) {
      ThrowBpf(env, "ringbuf_open", EINVAL, "callback must be a function");
      return;
    }
    fd_ = fcntl(map_fd, F_DUPFD_CLOEXEC, 3);
    if (fd_ < 0) {
      ThrowBpf(env, "ringbuf_open", errno, "dup ring buffer map fd");
      return;
    }
    LogBegin();
    rb_ = ring_buffer__new(fd_, &RingBuffer::OnSample, this, nullptr);
    int err = rb_ == nullptr ? errno : 0;
    std::string log = LogTake();
    if (rb_ == nullptr) {
      close(fd_);
      fd_ = -1;
      ThrowBpf(env, "ringbuf_open", err, "open ring buffer (is the map a BPF_MAP_TYPE_RINGBUF?)", log);
      return;
    }
    uv_loop_s* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      Close();
      ThrowBpf(env, "ringbuf_open", EINVAL, "no event loop");
      return;
    }
    poll_ = new uv_poll_t;
    poll_->data = this;
    int rc = uv_poll_init(loop, poll_, ring_buffer__epoll_fd(rb_));
    if (rc == 0) rc = uv_poll_start(poll_, UV_READABLE, &RingBuffer::OnPoll);
    if (rc != 0) {
      Close();
      ThrowBpf(env, "ringbuf_open", -rc, std::string("poll ring buffer: ") + uv_strerror(rc));
      return;
    }
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    context_ = std::make_unique<Napi::AsyncContext>(env, "nodemesh:RingBuffer");
    cleanup_.Arm(env, &RingBuffer::OnEnvCleanup, this);
  }

  ~RingBuffer() override { Close(); }

 private:
  static void OnEnvCleanup(void* arg) {
    auto* self = static_cast<RingBuffer*>(arg);
    self->cleanup_.Fired();
    self->Close();
  }

  void Close() {
    if (poll_ != nullptr) {
      uv_poll_stop(poll_);
      // The handle's memory must live until libuv is done with it.
      uv_close(reinterpret_cast<uv_handle_t*>(poll_),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
    }
    if (rb_ != nullptr) ring_buffer__free(rb_);
    rb_ = nullptr;
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    cleanup_.Disarm();
  }

  static int OnSample(void* ctx, void* data, size_t size) {
    auto* self = static_cast<RingBuffer*>(ctx);
    self->batch_.append(static_cast<const char*>(data), size);
    self->ends_.push_back(self->batch_.size());
    return 0;
  }

  // Drains the ring buffer into batch_/ends_. Returns records read or -errno.
  int Drain() {
    batch_.clear();
    ends_.clear();
    return ring_buffer__consume(rb_);
  }

  Napi::Array BatchArray(Napi::Env env) {
    Napi::Array arr = Napi::Array::New(env, ends_.size());
    size_t start = 0;
    for (size_t i = 0; i < ends_.size(); i++) {
      arr.Set(static_cast<uint32_t>(i),
              Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<const uint8_t*>(batch_.data()) + start,
                                          ends_[i] - start));
      start = ends_[i];
    }
    return arr;
  }

  static void OnPoll(uv_poll_t* handle, int status, int /*events*/) {
    auto* self = static_cast<RingBuffer*>(handle->data);
    if (self == nullptr || self->rb_ == nullptr) return;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    Napi::Value err = env.Null();
    Napi::Value records = env.Null();
    if (status < 0) {
      err = Napi::String::New(env, std::string("ring buffer poll failed: ") + uv_strerror(status));
    } else {
      int n = self->Drain();
      if (n < 0) {
        err = Napi::String::New(env, std::string("ring buffer consume failed: ") + strerror(-n));
      } else if (n == 0 || self->ends_.empty()) {
        return;
      } else {
        records = self->BatchArray(env);
      }
    }
    self->callback_.MakeCallback(self->Value(), {err, records}, *self->context_);
    if (env.IsExceptionPending()) {
      Napi::Error e = env.GetAndClearPendingException();
      napi_fatal_exception(env, e.Value());
    }
  }

  Napi::Value Closed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), rb_ == nullptr); }

  Napi::Value CloseJs(const Napi::CallbackInfo& info) {
    Close();
    return info.Env().Undefined();
  }

  // consume() -> Buffer[]: reads what is waiting now, without the callback.
  Napi::Value ConsumeJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (rb_ == nullptr) return ThrowBpf(env, "ringbuf_consume", EBADF, "ring buffer is closed");
    int n = Drain();
    if (n < 0) return ThrowBpf(env, "ringbuf_consume", -n, "consume ring buffer");
    return BatchArray(env);
  }

  Napi::Value Ref(const Napi::CallbackInfo& info) {
    if (poll_ != nullptr) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
    return info.Env().Undefined();
  }

  Napi::Value Unref(const Napi::CallbackInfo& info) {
    if (poll_ != nullptr) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
    return info.Env().Undefined();
  }

  int fd_ = -1;
  ring_buffer* rb_ = nullptr;
  uv_poll_t* poll_ = nullptr;
  Napi::FunctionReference callback_;
  std::unique_ptr<Napi::AsyncContext> context_;
  std::string batch_;
  std::vector<size_t> ends_;
  CleanupHook cleanup_;
};

}  // namespace

void InitRingBuffer(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = RingBuffer::Define(env);
  GetData(env)->ringbuf_ctor = Napi::Persistent(ctor);
  exports.Set("RingBuffer", ctor);
}

}  // namespace nodemesh
