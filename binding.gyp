{
  "variables": {
    "zstd": "node_modules/zstd-napi/deps/zstd/lib"
  },
  "targets": [
    {
      "target_name": "kura_native",
      "sources": [
        "native/kura_native.c",
        "native/blake3/blake3.c",
        "native/blake3/blake3_dispatch.c",
        "native/blake3/blake3_portable.c",
        "<(zstd)/common/debug.c",
        "<(zstd)/common/entropy_common.c",
        "<(zstd)/common/error_private.c",
        "<(zstd)/common/fse_decompress.c",
        "<(zstd)/common/pool.c",
        "<(zstd)/common/threading.c",
        "<(zstd)/common/xxhash.c",
        "<(zstd)/common/zstd_common.c",
        "<(zstd)/compress/fse_compress.c",
        "<(zstd)/compress/hist.c",
        "<(zstd)/compress/huf_compress.c",
        "<(zstd)/compress/zstd_compress.c",
        "<(zstd)/compress/zstd_compress_literals.c",
        "<(zstd)/compress/zstd_compress_sequences.c",
        "<(zstd)/compress/zstd_compress_superblock.c",
        "<(zstd)/compress/zstd_double_fast.c",
        "<(zstd)/compress/zstd_fast.c",
        "<(zstd)/compress/zstd_lazy.c",
        "<(zstd)/compress/zstd_ldm.c",
        "<(zstd)/compress/zstd_opt.c",
        "<(zstd)/compress/zstd_preSplit.c",
        "<(zstd)/decompress/huf_decompress.c",
        "<(zstd)/decompress/zstd_ddict.c",
        "<(zstd)/decompress/zstd_decompress.c",
        "<(zstd)/decompress/zstd_decompress_block.c"
      ],
      "include_dirs": ["native/blake3", "<(zstd)", "<(zstd)/common"],
      "cflags": ["-O3", "-fvisibility=hidden"],
      "defines": ["BLAKE3_NO_SSE2", "ZSTD_DISABLE_ASM", "ZSTDLIB_VISIBLE=", "ZSTDERRORLIB_VISIBLE=", "XXH_NAMESPACE=kura_", "ZSTD_NO_TRACE"],
      "conditions": [
        ["target_arch=='x64' and OS!='win'", {
          "sources": ["native/blake3/blake3_sse41_x86-64_unix.S", "native/blake3/blake3_avx2_x86-64_unix.S", "native/blake3/blake3_avx512_x86-64_unix.S"]
        }, {
          "defines": ["BLAKE3_NO_SSE41", "BLAKE3_NO_AVX2", "BLAKE3_NO_AVX512"]
        }]
      ]
    }
  ]
}
