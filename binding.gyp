{
  "targets": [
    {
      "target_name": "nodemesh_bpf",
      "sources": [
        "native/src/addon.cc",
        "native/src/common.cc",
        "native/src/object.cc",
        "native/src/map.cc",
        "native/src/link.cc",
        "native/src/ringbuf.cc",
        "native/src/helpers.cc",
        "native/src/delivery.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<!@(pkg-config --cflags-only-I libbpf | sed s/-I//g)"
      ],
      "libraries": ["<!@(pkg-config --libs libbpf)"],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_DISABLE_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "_GNU_SOURCE"
      ],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"]
    }
  ]
}
