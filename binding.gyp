{
  "targets": [
    {
      "target_name": "kura_native",
      "sources": [
        "native/kura_native.c",
        "native/blake3/blake3.c",
        "native/blake3/blake3_dispatch.c",
        "native/blake3/blake3_portable.c"
      ],
      "include_dirs": ["native/blake3"],
      "cflags": ["-O3"],
      "defines": ["BLAKE3_NO_AVX512", "BLAKE3_NO_SSE2"],
      "conditions": [
        ["target_arch=='x64' and OS!='win'", {
          "sources": ["native/blake3/blake3_sse41_x86-64_unix.S", "native/blake3/blake3_avx2_x86-64_unix.S"]
        }, {
          "defines": ["BLAKE3_NO_SSE41", "BLAKE3_NO_AVX2"]
        }]
      ]
    }
  ]
}
