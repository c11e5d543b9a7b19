/* Philox4x32-10 (Salmon et al., SC 2011) for a batch of keys, and the transforms the corruptions
 * use, on the CPU; corruptions/philox.py holds the definitions and the torch version they match.
 *
 * Word i of image b is word (i % 4) of Philox4x32-10 with counter (i / 4 low 32 bits, i / 4 high
 * 32 bits, stream, 0) and key (keys[2b], keys[2b + 1]). Plain C with no torch headers, so it
 * builds in about a second; loaded through ctypes.
 */
#include <math.h>
#include <stdint.h>

enum { RAW = 0, UNIFORM = 1, NORMAL = 2 };
enum { CHUNK = 1024 }; /* words per inner tile: a multiple of 4, in L1 */

static inline void philox_block(uint64_t counter, uint32_t stream, uint32_t k0, uint32_t k1,
                                uint32_t out[4]) {
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = stream, c3 = 0;
    for (int round = 0; round < 10; ++round) {
        if (round) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c0 = n0;
        c1 = (uint32_t)p1;
        c2 = n2;
        c3 = (uint32_t)p0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* One tile of `n` words (n <= CHUNK) of one image starting at word `start` (a multiple of 4). */
static void tile(uint32_t k0, uint32_t k1, uint32_t stream, int64_t start, int64_t n, int transform,
                 void *out) {
    uint32_t words[CHUNK];
    for (int64_t j = 0; j < n; j += 4) philox_block((uint64_t)(start + j) / 4, stream, k0, k1, words + j);
    if (transform == RAW) {
        int64_t *o = (int64_t *)out;
        for (int64_t i = 0; i < n; ++i) o[i] = words[i];
    } else if (transform == UNIFORM) {
        float *o = (float *)out;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) o[i] = (float)(words[i] >> 8) * 0x1p-24f;
    } else { /* Box-Muller on the pair (2m, 2m + 1); an odd n leaves its last sine unused */
        float *o = (float *)out;
        float radius[CHUNK / 2], angle[CHUNK / 2];
        int64_t pairs = (n + 1) / 2;
#pragma omp simd
        for (int64_t m = 0; m < pairs; ++m) {
            float u1 = (float)((words[2 * m] >> 8) + 1) * 0x1p-24f;
            float u2 = (float)(words[2 * m + 1] >> 8) * 0x1p-24f;
            radius[m] = sqrtf(-2.0f * logf(u1));
            angle[m] = 6.2831855f * u2;
        }
        float cosine[CHUNK / 2], sine[CHUNK / 2];
#pragma omp simd
        for (int64_t m = 0; m < pairs; ++m) cosine[m] = cosf(angle[m]);
#pragma omp simd
        for (int64_t m = 0; m < pairs; ++m) sine[m] = sinf(angle[m]);
        for (int64_t m = 0; m < n / 2; ++m) {
            o[2 * m] = radius[m] * cosine[m];
            o[2 * m + 1] = radius[m] * sine[m];
        }
        if (n % 2) o[n - 1] = radius[pairs - 1] * cosine[pairs - 1];
    }
}

void philox4x32(const int64_t *keys, int64_t batch, int64_t n_words, int64_t stream, int transform,
                void *out, int threads) {
    int64_t tiles = (n_words + CHUNK - 1) / CHUNK;
    int64_t width = transform == RAW ? 8 : 4;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t t = 0; t < tiles; ++t) {
            int64_t start = t * CHUNK;
            int64_t n = n_words - start < CHUNK ? n_words - start : CHUNK;
            tile((uint32_t)keys[2 * b], (uint32_t)keys[2 * b + 1], (uint32_t)stream, start, n, transform,
                 (char *)out + (b * n_words + start) * width);
        }
    }
}
