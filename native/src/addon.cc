// SPDX-License-Identifier: Apache-2.0
// nodemesh_bpf: node-addon-api bindings to the system libbpf. Only
// src/bpf/ imports this; everything else uses the typed TypeScript face.
#include "common.h"

namespace nodemesh {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InstallLibbpfLog();
  env.SetInstanceData(new AddonData());
  InitObject(env, exports);
  InitMap(env, exports);
  InitLink(env, exports);
  InitRingBuffer(env, exports);
  InitHelpers(env, exports);
  InitDelivery(env, exports);
  return exports;
}

}  // namespace nodemesh

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return nodemesh::Init(env, exports); }

NODE_API_MODULE(nodemesh_bpf, InitAddon)
