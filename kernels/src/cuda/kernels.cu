// cheems CUDA kernels, compiled at run time with NVRTC (src/cuda/mod.rs). Kernels that depend on
// the position read it from `step` (step[2t] = token t, step[1] = position of token 0), so one
// decode step is a fixed sequence of launches that a CUDA graph can replay. Weight types use
// ggml's ids and block layouts (formats/src/blocks): F32 0, F16 1, Q4_0 2, Q4_1 3, Q5_0 6, Q5_1 7,
// Q8_0 8, Q4_K 12, Q5_K 13, Q6_K 14, BF16 30 (super-blocks of 256 as ggml's). Quantized
// products follow llama.cpp's MMVQ: the activation is quantized to int8 blocks of 32 and each
// weight block is an int8 dot product (dp4a). Activation blocks are int8 quants q[32·b..] and a
// float pair per block, ds[2b] = d and ds[2b+1] = s = d·Σq, each rounded to f16 as ggml's
// q8_0/q8_1 blocks hold them, so the products equal the CPU's up to summation order.

// Programmatic dependent launch (sm_90+): every kernel first waits for the kernels it depends on
// (a no-op when launched without the attribute), then lets the next launch start scheduling.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PDL_WAIT() asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory")
#else
#define PDL_WAIT()
#endif

#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14
#define T_BF16 30

#define INFINITY __int_as_float(0x7f800000)

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float bf2f(u16 h) { return __uint_as_float(((u32)h) << 16); }

// x rounded to the nearest f16.
__device__ __forceinline__ float round_f16(float x) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h2f(h);
}

__device__ __forceinline__ u16 ld16(const u8* p) { return *(const u16*)p; }

// 4 bytes at a 2-aligned address.
__device__ __forceinline__ u32 ld32_2(const u8* p) {
    const u16* q = (const u16*)p;
    return (u32)q[0] | ((u32)q[1] << 16);
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// Words (16 bytes, or a quarter of a quantized block) a lane loads from a row before using any:
// see rowdot2.
#define RD_K 6

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float block_sum(float v) {
    __shared__ float red[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    if (w == 0) {
        float s = lane < (int)(blockDim.x >> 5) ? red[lane] : 0.0f;
        s = warp_sum(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

__device__ float block_max(float v) {
    __shared__ float red[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    if (w == 0) {
        float s = lane < (int)(blockDim.x >> 5) ? red[lane] : -INFINITY;
        s = warp_max(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

// Scale and min of sub-block j (0..7) of a Q4_K/Q5_K super-block: 6 bits each, packed in 12
// bytes as ggml's get_scale_min_k4.
__device__ __forceinline__ void kscale(const u8* s, int j, int* sc, int* m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Value j of a row of type ty (any type above).
__device__ float dq(int ty, const u8* row, int j) {
    switch (ty) {
    case T_F32: return ((const float*)row)[j];
    case T_F16: return h2f(((const u16*)row)[j]);
    case T_BF16: return bf2f(((const u16*)row)[j]);
    case T_Q8_0: {
        const u8* b = row + (j >> 5) * 34;
        return h2f(ld16(b)) * (float)(signed char)b[2 + (j & 31)];
    }
    case T_Q4_0: {
        const u8* b = row + (j >> 5) * 18;
        int i = j & 31;
        int q = i < 16 ? (b[2 + i] & 15) : (b[2 + i - 16] >> 4);
        return h2f(ld16(b)) * (float)(q - 8);
    }
    case T_Q4_1: {
        const u8* b = row + (j >> 5) * 20;
        int i = j & 31;
        int q = i < 16 ? (b[4 + i] & 15) : (b[4 + i - 16] >> 4);
        return h2f(ld16(b)) * (float)q + h2f(ld16(b + 2));
    }
    case T_Q5_0: {
        const u8* b = row + (j >> 5) * 22;
        int i = j & 31;
        u32 qh = ld32_2(b + 2);
        int q = (i < 16 ? (b[6 + i] & 15) : (b[6 + i - 16] >> 4)) | (((qh >> i) & 1) << 4);
        return h2f(ld16(b)) * (float)(q - 16);
    }
    case T_Q5_1: {
        const u8* b = row + (j >> 5) * 24;
        int i = j & 31;
        u32 qh = *(const u32*)(b + 4);
        int q = (i < 16 ? (b[8 + i] & 15) : (b[8 + i - 16] >> 4)) | (((qh >> i) & 1) << 4);
        return h2f(ld16(b)) * (float)q + h2f(ld16(b + 2));
    }
    case T_Q4_K:
    case T_Q5_K: {
        // Sub-block sb (32 values) of a super-block: 4-bit values in the low (even sb) or high
        // (odd sb) nibbles of 32 bytes, Q5_K's fifth bit in bit sb of qh[l].
        const u8* b = row + (j >> 8) * (ty == T_Q4_K ? 144 : 176);
        int sb = (j & 255) >> 5, l = j & 31;
        int sc, m;
        kscale(b + 4, sb, &sc, &m);
        const u8* qs = b + (ty == T_Q4_K ? 16 : 48);
        int byte = qs[32 * (sb >> 1) + l];
        int q = (sb & 1) ? byte >> 4 : byte & 15;
        if (ty == T_Q5_K) q |= ((b[16 + l] >> sb) & 1) << 4;
        return h2f(ld16(b)) * (float)sc * (float)q - h2f(ld16(b + 2)) * (float)m;
    }
    case T_Q6_K: {
        // Halves of 128: chunk c of 32 values in ql's low (c < 2) or high nibbles, two bits of
        // qh[l] at 2c; an int8 scale per 16 values.
        const u8* b = row + (j >> 8) * 210;
        int jj = j & 255, n = jj >> 7, c = (jj & 127) >> 5, l = jj & 31;
        int byte = b[64 * n + (c & 1) * 32 + l];
        int nib = (c >> 1) ? byte >> 4 : byte & 15;
        int hb = (b[128 + 32 * n + l] >> (2 * c)) & 3;
        int sc = (signed char)b[192 + 8 * n + (l >> 4) + 2 * c];
        return h2f(ld16(b + 208)) * (float)sc * (float)((nib | (hb << 4)) - 32);
    }
    }
    return 0.0f;
}

// ---- element-wise -------------------------------------------------------------------------------

// x[t] = row step[0 + 2t] of the embedding, for n tokens (grid.y = token).
extern "C" __global__ void embed(int ty, const u8* w, long long row_bytes, const int* step,
                                 float* x, int d) {
    PDL_WAIT();
    int t = blockIdx.y;
    const u8* row = w + (long long)step[2 * t] * row_bytes;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < d; j += gridDim.x * blockDim.x)
        x[(long long)t * d + j] = dq(ty, row, j);
}

// out[r] = w ⊙ x[r] / sqrt(mean(x[r]²) + eps), one block per row (w shared by the rows).
extern "C" __global__ void rmsnorm(const float* x, const float* w, float eps, float* out, int n) {
    PDL_WAIT();
    const float* xr = x + (long long)blockIdx.x * n;
    float* o = out + (long long)blockIdx.x * n;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) ss += xr[j] * xr[j];
    ss = block_sum(ss) / (float)n;
    float inv = 1.0f / sqrtf(ss + eps);
    for (int j = threadIdx.x; j < n; j += blockDim.x) o[j] = w[j] * (xr[j] * inv);
}

// Quantizes one block of 32 values (one per lane of a warp) as ggml's quantize_row_q8_1_ref:
// d = max|x| / 127, q = round(x / d), and ds[2b], ds[2b+1] = f16(d), f16(d·Σq).
__device__ __forceinline__ void q8_block(float v, signed char* q, float* ds, long long b, int lane) {
    float amax = warp_max(fabsf(v));
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    float qv = roundf(v * id);
    q[b * 32 + lane] = (signed char)qv;
    float sum = warp_sum(qv);
    if (lane == 0) {
        ds[2 * b] = round_f16(d);
        ds[2 * b + 1] = round_f16(sum * d);
    }
}

// Row r = blockIdx.x: with a branch, first x[r] = scale ⊙ x[r] + branch[r] (scale NULL: x +=
// branch), written back (the residual add); then out[r] = RMSNorm(x[r]) ⊙ w, and with q, its
// int8 blocks (n a multiple of 32) for the product that follows.
extern "C" __global__ void add_rmsnorm(float* x, const float* scale, const float* branch,
                                       const float* w, float eps, float* out, int n,
                                       signed char* q, float* qd) {
    PDL_WAIT();
    float* xr = x + (long long)blockIdx.x * n;
    float* o = out + (long long)blockIdx.x * n;
    const float* br = branch ? branch + (long long)blockIdx.x * n : 0;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float v = xr[j];
        if (br) {
            v = scale ? scale[j] * v + br[j] : v + br[j];
            xr[j] = v;
        }
        ss += v * v;
    }
    ss = block_sum(ss) / (float)n;
    float inv = 1.0f / sqrtf(ss + eps);
    for (int j = threadIdx.x; j < n; j += blockDim.x) o[j] = w[j] * (xr[j] * inv);
    if (!q) return;
    __syncthreads();
    int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    long long b0 = (long long)blockIdx.x * (n / 32);
    for (int b = threadIdx.x >> 5; b < n / 32; b += nw) q8_block(o[b * 32 + lane], q, qd, b0 + b, lane);
}

// x = scale ⊙ x + b (scale NULL: x += b), over n values with the scale of period d.
extern "C" __global__ void residual(float* x, const float* scale, const float* b, int n, int d) {
    PDL_WAIT();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    x[i] = scale ? scale[i % d] * x[i] + b[i] : x[i] + b[i];
}

// a = silu(a) ⊙ b
extern "C" __global__ void silu_mul(float* a, const float* b, int n) {
    PDL_WAIT();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = silu(a[i]) * b[i];
}

// a = silu(a) ⊙ b and its int8 blocks (n a multiple of 32), one warp per block of 32.
extern "C" __global__ void silu_mul_q8(float* a, const float* b, int n, signed char* q, float* d) {
    PDL_WAIT();
    long long blk = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (blk * 32 >= n) return;
    long long i = blk * 32 + lane;
    float v = silu(a[i]) * b[i];
    a[i] = v;
    q8_block(v, q, d, blk, lane);
}

// y[i] += b[i % d] over n values.
extern "C" __global__ void add_bias(float* y, const float* b, int n, int d) {
    PDL_WAIT();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += b[i % d];
}

// ---- products -----------------------------------------------------------------------------------

// Activations to int8 blocks of 32: q = round(x / d), d = max|x| / 127 (ggml's q8_0/q8_1
// quants). One warp per block.
extern "C" __global__ void quantize_q8(const float* x, signed char* q, float* ds, int n) {
    PDL_WAIT();
    int b = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (b * 32 >= n) return;
    q8_block(x[b * 32 + lane], q, ds, b, lane);
}

// One quarter (8 values, sub = 0..3) of block b of a quantized row against the activation's
// block (quants aq, f16-rounded scale da and da·Σq sa): its share of the dot product. The
// offset terms of Q4_1/Q5_1 (m·sa) are counted once per block, by sub 0.
template <int T>
__device__ __forceinline__ float vdot(const u8* row, int b, int sub, const int* aq, float da,
                                      float sa) {
    int a0, a1, w0, w1;
    if (T == T_Q8_0) {
        const u8* blk = row + b * 34;
        a0 = aq[2 * sub];
        a1 = aq[2 * sub + 1];
        w0 = (int)ld32_2(blk + 2 + 8 * sub);
        w1 = (int)ld32_2(blk + 6 + 8 * sub);
        return h2f(ld16(blk)) * da * (float)__dp4a(w0, a0, __dp4a(w1, a1, 0));
    }
    if (T == T_Q4_K || T == T_Q5_K) {
        // Activation block b is sub-block j of super-block b / 8; its values are contiguous
        // nibbles (see dq), so the 8 values of `sub` pair with aq[2sub], aq[2sub+1].
        const u8* blk = row + (b >> 3) * (T == T_Q4_K ? 144 : 176);
        int j = b & 7;
        int sc, m;
        kscale(blk + 4, j, &sc, &m);
        const u8* qs = blk + (T == T_Q4_K ? 16 : 48) + 32 * (j >> 1) + 8 * sub;
        u32 v0 = *(const u32*)qs, v1 = *(const u32*)(qs + 4);
        int sh = (j & 1) * 4;
        w0 = (int)((v0 >> sh) & 0x0F0F0F0Fu);
        w1 = (int)((v1 >> sh) & 0x0F0F0F0Fu);
        if (T == T_Q5_K) {
            const u8* qh = blk + 16 + 8 * sub;
            w0 |= (int)(((*(const u32*)qh >> j) & 0x01010101u) << 4);
            w1 |= (int)(((*(const u32*)(qh + 4) >> j) & 0x01010101u) << 4);
        }
        a0 = aq[2 * sub];
        a1 = aq[2 * sub + 1];
        int s = __dp4a(w0, a0, __dp4a(w1, a1, 0));
        return h2f(ld16(blk)) * (float)sc * da * (float)s -
               (sub == 0 ? h2f(ld16(blk + 2)) * (float)m * sa : 0.0f);
    }
    if (T == T_Q6_K) {
        // Block b is chunk c of half n of super-block b / 8 (see dq); one int8 scale per 16
        // values, so per 8 values of `sub`. Rows are 2-byte aligned (210-byte blocks).
        const u8* blk = row + (b >> 3) * 210;
        int j = b & 7, n = j >> 2, c = j & 3;
        const u8* ql = blk + 64 * n + (c & 1) * 32 + 8 * sub;
        const u8* qh = blk + 128 + 32 * n + 8 * sub;
        int sh = (c >> 1) * 4;
        u32 h0 = ld32_2(qh), h1 = ld32_2(qh + 4);
        w0 = (int)(((ld32_2(ql) >> sh) & 0x0F0F0F0Fu) | (((h0 >> (2 * c)) & 0x03030303u) << 4));
        w1 = (int)(((ld32_2(ql + 4) >> sh) & 0x0F0F0F0Fu) | (((h1 >> (2 * c)) & 0x03030303u) << 4));
        a0 = aq[2 * sub];
        a1 = aq[2 * sub + 1];
        int sumq = __dp4a(0x01010101, a0, __dp4a(0x01010101, a1, 0));
        int s = __dp4a(w0, a0, __dp4a(w1, a1, 0)) - 32 * sumq;
        int sc = (signed char)blk[192 + 8 * n + (sub >> 1) + 2 * c];
        return h2f(ld16(blk + 208)) * (float)sc * da * (float)s;
    }
    a0 = aq[sub];
    a1 = aq[4 + sub];
    if (T == T_Q4_0) {
        const u8* blk = row + b * 18;
        u32 v = ld32_2(blk + 2 + 4 * sub);
        w0 = (int)(v & 0x0F0F0F0Fu);
        w1 = (int)((v >> 4) & 0x0F0F0F0Fu);
        int sumq = __dp4a(0x01010101, a0, __dp4a(0x01010101, a1, 0));
        int s = __dp4a(w0, a0, __dp4a(w1, a1, 0));
        return h2f(ld16(blk)) * da * (float)(s - 8 * sumq);
    }
    if (T == T_Q4_1) {
        const u8* blk = row + b * 20;
        u32 v = *(const u32*)(blk + 4 + 4 * sub);
        w0 = (int)(v & 0x0F0F0F0Fu);
        w1 = (int)((v >> 4) & 0x0F0F0F0Fu);
        int s = __dp4a(w0, a0, __dp4a(w1, a1, 0));
        return h2f(ld16(blk)) * da * (float)s + (sub == 0 ? h2f(ld16(blk + 2)) * sa : 0.0f);
    }
    // Q5_0 / Q5_1: the fifth bit of value i is bit i of qh.
    const u8* blk = row + b * (T == T_Q5_0 ? 22 : 24);
    u32 qh = T == T_Q5_0 ? ld32_2(blk + 2) : *(const u32*)(blk + 4);
    u32 v = T == T_Q5_0 ? ld32_2(blk + 6 + 4 * sub) : *(const u32*)(blk + 8 + 4 * sub);
    u32 lo = qh >> (4 * sub), hi = qh >> (16 + 4 * sub);
    u32 hl = ((lo & 1) << 4) | ((lo & 2) << 11) | ((lo & 4) << 18) | ((lo & 8) << 25);
    u32 hh = ((hi & 1) << 4) | ((hi & 2) << 11) | ((hi & 4) << 18) | ((hi & 8) << 25);
    w0 = (int)((v & 0x0F0F0F0Fu) | hl);
    w1 = (int)(((v >> 4) & 0x0F0F0F0Fu) | hh);
    int s = __dp4a(w0, a0, __dp4a(w1, a1, 0));
    if (T == T_Q5_0) {
        int sumq = __dp4a(0x01010101, a0, __dp4a(0x01010101, a1, 0));
        return h2f(ld16(blk)) * da * (float)(s - 16 * sumq);
    }
    return h2f(ld16(blk)) * da * (float)s + (sub == 0 ? h2f(ld16(blk + 2)) * sa : 0.0f);
}

// Up to three matrices of one type and width multiplied by the same activations in one launch
// (Q|K|V, gate|up): warp row R < r0 is matrix 0's row R, then matrix 1's, then 2's. nc <= NC
// token columns; y_m is [nc][r_m].
struct Three {
    const u8* w[3];
    float* y[3];
    const float* b[3];
    int r[3];
};

// Sums the wpr warps' partial sums of a row and writes y (+ bias).
template <int NC>
__device__ __forceinline__ void finish_row(const Three& m, float* acc, int nc, bool ok, int k,
                                           int r, int warp, int lane, int wpr) {
    __shared__ float red[4][NC];
    for (int c = 0; c < NC; c++) {
        float s = warp_sum(acc[c]);
        if (lane == 0 && warp < 4) red[warp][c] = s;
    }
    __syncthreads();
    if (!ok || lane != 0 || warp % wpr != 0) return;
    for (int c = 0; c < nc && c < NC; c++) {
        float s = 0.0f;
        for (int p = 0; p < wpr; p++) s += red[warp + p][c];
        m.y[k][(long long)c * m.r[k] + r] = s + (m.b[k] ? m.b[k][r] : 0.0f);
    }
}

__device__ __forceinline__ bool pick(const Three& m, int R, int* k, int* r) {
    if (R < m.r[0]) { *k = 0; *r = R; return true; }
    R -= m.r[0];
    if (R < m.r[1]) { *k = 1; *r = R; return true; }
    R -= m.r[1];
    if (R < m.r[2]) { *k = 2; *r = R; return true; }
    return false;
}

// wpr warps share a row (1, 2 or 4 of the block's 4 warps): short matrices get more parallel
// loads per row, and so less latency.
template <int T, int NC>
__device__ void mmvq3(const Three& m, long long row_bytes, const signed char* q, const float* ds,
                      int nb, int nc, int wpr) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int R = blockIdx.x * ((blockDim.x >> 5) / wpr) + warp / wpr;
    int part = warp % wpr;
    int k = 0, r = 0;
    bool ok = pick(m, R, &k, &r);
    const u8* row = m.w[k] + (long long)r * row_bytes;
    float acc[NC];
    for (int c = 0; c < NC; c++) acc[c] = 0.0f;
    for (int it = part * 32 + lane; ok && it < nb * 4; it += 32 * wpr) {
        int b = it >> 2, sub = it & 3;
        if (NC == 1) {
            acc[0] += vdot<T>(row, b, sub, (const int*)(q + (long long)b * 32), ds[2 * b],
                              ds[2 * b + 1]);
        } else {
            for (int c = 0; c < NC; c++) {
                if (c < nc) {
                    long long cb = (long long)c * nb + b;
                    const int* aq = (const int*)(q + cb * 32);
                    acc[c] += vdot<T>(row, b, sub, aq, ds[2 * cb], ds[2 * cb + 1]);
                }
            }
        }
    }
    finish_row<NC>(m, acc, nc, ok, k, r, warp, lane, wpr);
}

#define MMVQ3(name, T)                                                                         \
    extern "C" __global__ void name(const u8* w0, const u8* w1, const u8* w2, long long rb,    \
                                    const signed char* q, const float* d, float* y0,           \
                                    float* y1, float* y2, int r0, int r1, int r2, int nb,      \
                                    const float* b0, const float* b1, const float* b2, int nc, \
                                    int wpr) {                                                 \
        PDL_WAIT();                                                                            \
        Three m = {{w0, w1, w2}, {y0, y1, y2}, {b0, b1, b2}, {r0, r1, r2}};                    \
        if (nc == 1) mmvq3<T, 1>(m, rb, q, d, nb, 1, wpr);                                      \
        else mmvq3<T, 8>(m, rb, q, d, nb, nc, wpr);                                            \
    }
MMVQ3(mmvq3_q4_0, T_Q4_0)
MMVQ3(mmvq3_q4_1, T_Q4_1)
MMVQ3(mmvq3_q5_0, T_Q5_0)
MMVQ3(mmvq3_q5_1, T_Q5_1)
MMVQ3(mmvq3_q8_0, T_Q8_0)
MMVQ3(mmvq3_q4_k, T_Q4_K)
MMVQ3(mmvq3_q5_k, T_Q5_K)
MMVQ3(mmvq3_q6_k, T_Q6_K)


// The 8 F16 (T_F16) or BF16 values of 16 bytes, as floats.
template <int T>
__device__ __forceinline__ void unpack8(uint4 v, float* f) {
    u32 p[4] = {v.x, v.y, v.z, v.w};
    for (int j = 0; j < 4; j++) {
        if (T == T_F16) {
            f[2 * j] = h2f((u16)(p[j] & 0xffff));
            f[2 * j + 1] = h2f((u16)(p[j] >> 16));
        } else {
            f[2 * j] = __uint_as_float(p[j] << 16);
            f[2 * j + 1] = __uint_as_float(p[j] & 0xffff0000u);
        }
    }
}

// Float weights (F32, F16, BF16) against f32 activations, up to three matrices (see mmvq3).
template <int T, int NC>
__device__ void mvf3(const Three& m, long long row_bytes, const float* x, int cols, int nc,
                     int wpr) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int R = blockIdx.x * ((blockDim.x >> 5) / wpr) + warp / wpr;
    int part = warp % wpr;
    int k = 0, r = 0;
    bool ok = pick(m, R, &k, &r);
    const u8* row = m.w[k] + (long long)r * row_bytes;
    float acc[NC];
    for (int c = 0; c < NC; c++) acc[c] = 0.0f;
    int l0 = part * 32 + lane, ls = 32 * wpr;
    if (!ok) {
    } else if (T == T_F32 && (cols & 3) == 0) {
        const float4* wr = (const float4*)row;
        for (int i = l0; i < cols / 4; i += ls) {
            float4 v = wr[i];
            for (int c = 0; c < NC; c++) {
                if (c < nc) {
                    float4 a = ((const float4*)(x + (long long)c * cols))[i];
                    acc[c] += v.x * a.x + v.y * a.y + v.z * a.z + v.w * a.w;
                }
            }
        }
    } else if (T != T_F32 && (cols & 7) == 0) {
        const uint4* wr = (const uint4*)row;
        for (int i = l0; i < cols / 8; i += ls) {
            uint4 v = wr[i];
            float f[8];
            unpack8<T>(v, f);
            for (int c = 0; c < NC; c++) {
                if (c < nc) {
                    const float4* xa = (const float4*)(x + (long long)c * cols) + 2 * i;
                    float4 a = xa[0], b = xa[1];
                    acc[c] += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * b.x +
                              f[5] * b.y + f[6] * b.z + f[7] * b.w;
                }
            }
        }
    } else {
        for (int i = l0; i < cols; i += ls) {
            float wv = T == T_F32 ? ((const float*)row)[i]
                     : T == T_F16 ? h2f(((const u16*)row)[i]) : bf2f(((const u16*)row)[i]);
            for (int c = 0; c < NC; c++)
                if (c < nc) acc[c] += wv * x[(long long)c * cols + i];
        }
    }
    finish_row<NC>(m, acc, nc, ok, k, r, warp, lane, wpr);
}

#define MVF3(name, T)                                                                          \
    extern "C" __global__ void name(const u8* w0, const u8* w1, const u8* w2, long long rb,    \
                                    const float* x, float* y0, float* y1, float* y2, int r0,   \
                                    int r1, int r2, int cols, const float* b0, const float* b1, \
                                    const float* b2, int nc, int wpr) {                        \
        PDL_WAIT();                                                                            \
        Three m = {{w0, w1, w2}, {y0, y1, y2}, {b0, b1, b2}, {r0, r1, r2}};                    \
        if (nc == 1) mvf3<T, 1>(m, rb, x, cols, 1, wpr);                                        \
        else mvf3<T, 8>(m, rb, x, cols, nc, wpr);                                              \
    }
MVF3(mvf3_f32, T_F32)
MVF3(mvf3_f16, T_F16)
MVF3(mvf3_bf16, T_BF16)

// ---- tensor-core products (sm_80+) --------------------------------------------------------------

// Batches of tokens against up to three matrices (see Three) on the tensor cores, as llama.cpp's
// MMQ: a block of 256 threads computes a tile of MQ_BM rows × MQ_BN tokens, staging the weight
// tile in shared memory once for all its tokens. Quantized types: each weight block of 32 is
// unpacked to 32 int8 values (offsets q − 8, q − 16, q − 32 folded in, so the integer sum is the
// one the dp4a path computes), multiplied with the activation's int8 block by
// mma.m16n8k32.s8 (Q6_K: two m16n8k16, one per int8 sub-scale, combined in integers), then
// scaled in f32 by weight scale × activation scale; the min / offset terms (Q4_1, Q5_1, Q4_K,
// Q5_K) add m · s per block as vdot does. Only the f32 summation order differs from mmvq3.
// F16/BF16: tf32 mma.m16n8k8 with the activation split x = hi + lo (both tf32; F16 and BF16
// weights are exact in tf32), two products per step and f32 accumulation. Eight warps: warp w
// covers rows 16·(w & 3) and every token of the tile (n-tiles past the batch are skipped) for
// the even (w < 4) or odd steps of each stage; the two halves are summed at the end.
#define MQ_BM 64
#define MQ_BN 32
#define MQ_KB 8                  // blocks of 32 values per stage
#define MQ_LD (MQ_KB * 8 + 4)    // 32-bit words per staged row: 256 bytes (F16/BF16: 64 floats),
                                 // and 16 of padding (conflict-free fragment loads)

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define MMA_OK 1
#else
#define MMA_OK 0
#endif

__device__ __forceinline__ void mma_k32(int* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#if MMA_OK
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ void mma_k16(int* c, u32 a0, u32 a1, u32 b0) {
#if MMA_OK
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(b0));
#endif
}

__device__ __forceinline__ void mma_tf32(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#if MMA_OK
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ u32 to_tf32(float x) {
    u32 r = __float_as_uint(x);
#if MMA_OK
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
#endif
    return r;
}

// Bits 0..3 of h moved to bit 4 of bytes 0..3 (Q5_0/Q5_1's fifth bits of 4 values).
__device__ __forceinline__ u32 bits4(u32 h) {
    return ((h & 1) << 4) | ((h & 2) << 11) | ((h & 4) << 18) | ((h & 8) << 25);
}

// Block b (32 values) of a quantized row as 32 int8 values (v, 8 words, value i in byte i), its
// scale d, its offset term m (added as m · s, s = the activation block's d·Σq; 0 when none) and
// for Q6_K the int8 scales of its two halves of 16.
template <int T>
__device__ __forceinline__ void mq_unpack(const u8* row, int b, u32* v, float* d, float* m,
                                          int* sc) {
    if (T == T_Q8_0) {
        const u8* blk = row + b * 34;
        *d = h2f(ld16(blk));
        for (int i = 0; i < 8; i++) v[i] = ld32_2(blk + 2 + 4 * i);
    } else if (T == T_Q4_0 || T == T_Q4_1) {
        const u8* blk = row + b * (T == T_Q4_0 ? 18 : 20);
        *d = h2f(ld16(blk));
        if (T == T_Q4_1) *m = h2f(ld16(blk + 2));
        for (int i = 0; i < 4; i++) {
            u32 x = T == T_Q4_0 ? ld32_2(blk + 2 + 4 * i) : *(const u32*)(blk + 4 + 4 * i);
            v[i] = x & 0x0F0F0F0Fu;
            v[4 + i] = (x >> 4) & 0x0F0F0F0Fu;
            if (T == T_Q4_0) {
                v[i] = __vsub4(v[i], 0x08080808u);
                v[4 + i] = __vsub4(v[4 + i], 0x08080808u);
            }
        }
    } else if (T == T_Q5_0 || T == T_Q5_1) {
        const u8* blk = row + b * (T == T_Q5_0 ? 22 : 24);
        *d = h2f(ld16(blk));
        if (T == T_Q5_1) *m = h2f(ld16(blk + 2));
        u32 qh = T == T_Q5_0 ? ld32_2(blk + 2) : *(const u32*)(blk + 4);
        for (int i = 0; i < 4; i++) {
            u32 x = T == T_Q5_0 ? ld32_2(blk + 6 + 4 * i) : *(const u32*)(blk + 8 + 4 * i);
            v[i] = (x & 0x0F0F0F0Fu) | bits4(qh >> (4 * i));
            v[4 + i] = ((x >> 4) & 0x0F0F0F0Fu) | bits4(qh >> (16 + 4 * i));
            if (T == T_Q5_0) {
                v[i] = __vsub4(v[i], 0x10101010u);
                v[4 + i] = __vsub4(v[4 + i], 0x10101010u);
            }
        }
    } else if (T == T_Q4_K || T == T_Q5_K) {
        // Block b is sub-block j of super-block b / 8 (see dq and vdot).
        const u8* blk = row + (b >> 3) * (T == T_Q4_K ? 144 : 176);
        int j = b & 7, s, mn;
        kscale(blk + 4, j, &s, &mn);
        *d = h2f(ld16(blk)) * (float)s;
        *m = -(h2f(ld16(blk + 2)) * (float)mn);
        const u8* qs = blk + (T == T_Q4_K ? 16 : 48) + 32 * (j >> 1);
        int sh = (j & 1) * 4;
        for (int i = 0; i < 8; i++) {
            v[i] = (*(const u32*)(qs + 4 * i) >> sh) & 0x0F0F0F0Fu;
            if (T == T_Q5_K) v[i] |= ((*(const u32*)(blk + 16 + 4 * i) >> j) & 0x01010101u) << 4;
        }
    } else if (T == T_Q6_K) {
        const u8* blk = row + (b >> 3) * 210;
        int j = b & 7, n = j >> 2, c = j & 3;
        const u8* ql = blk + 64 * n + (c & 1) * 32;
        const u8* qh = blk + 128 + 32 * n;
        int sh = (c >> 1) * 4;
        for (int i = 0; i < 8; i++) {
            u32 x = ((ld32_2(ql + 4 * i) >> sh) & 0x0F0F0F0Fu) |
                    (((ld32_2(qh + 4 * i) >> (2 * c)) & 0x03030303u) << 4);
            v[i] = __vsub4(x, 0x20202020u);
        }
        *d = h2f(ld16(blk + 208));
        sc[0] = (signed char)blk[192 + 8 * n + 2 * c];
        sc[1] = (signed char)blk[192 + 8 * n + 1 + 2 * c];
    }
}

// Sums the two warps of a row group (w and w + 4: even and odd steps) into warp w's acc, through
// shared memory buf (at least 4 · 32 · 16 floats, free when called); true for the warps that
// hold the sums.
__device__ __forceinline__ bool mq_reduce(float (*acc)[4], float* buf) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float* p = buf + ((warp & 3) * 32 + lane) * 16;
    if (warp >= 4)
        for (int j = 0; j < 4; j++)
            for (int e = 0; e < 4; e++) p[4 * j + e] = acc[j][e];
    __syncthreads();
    if (warp >= 4) return false;
    for (int j = 0; j < 4; j++)
        for (int e = 0; e < 4; e++) acc[j][e] += p[4 * j + e];
    return true;
}

// Writes a tile's results: acc[j] holds rows (g, g + 8) × tokens (2t, 2t + 1) of n-tile j.
// (tokens from tok0, those below n stored).
__device__ __forceinline__ void mq_store(const Three& m, float (*acc)[4], int row0, int tok0,
                                         int n) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    for (int h = 0; h < 2; h++) {
        int k, r;
        if (!pick(m, row0 + g + 8 * h, &k, &r)) continue;
        float bias = m.b[k] ? m.b[k][r] : 0.0f;
        for (int j = 0; j < 4; j++) {
            for (int e = 0; e < 2; e++) {
                int tok = tok0 + 8 * j + 2 * t + e;
                if (tok < n) m.y[k][(long long)tok * m.r[k] + r] = acc[j][2 * h + e] + bias;
            }
        }
    }
}

// y for rows blockIdx.x·MQ_BM.. and tokens blockIdx.y·MQ_BN.. of n (see above); q, ds: the
// activation's int8 blocks ([n][nb][32], [n][nb][2]).
template <int T>
__device__ void mmq3(const Three& m, long long row_bytes, const signed char* q, const float* ds,
                     int nb, int n) {
    __shared__ __align__(16) u32 sw[MQ_BM * MQ_LD];
    __shared__ __align__(16) u32 sa[MQ_BN * MQ_LD];
    __shared__ float swd[MQ_BM][MQ_KB], swm[MQ_BM][MQ_KB], sad[MQ_BN][MQ_KB], sas[MQ_BN][MQ_KB];
    __shared__ signed char ssc[MQ_BM][MQ_KB][2];
    const bool offs = T == T_Q4_1 || T == T_Q5_1 || T == T_Q4_K || T == T_Q5_K;
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    int wm = warp & 3, wn = warp >> 2;
    int row0 = blockIdx.x * MQ_BM, tok0 = blockIdx.y * MQ_BN;
    int nc = min(MQ_BN, n - tok0);
    q += (long long)tok0 * nb * 32;
    ds += (long long)tok0 * nb * 2;
    // This thread stages block lb of weight rows lr and lr + 32 and of token lr.
    int lr = tid >> 3, lb = tid & 7;
    const u8* wrow[2];
    for (int h = 0; h < 2; h++) {
        int k, r;
        wrow[h] = pick(m, row0 + lr + 32 * h, &k, &r) ? m.w[k] + (long long)r * row_bytes : 0;
    }
    float acc[4][4];
    for (int j = 0; j < 4; j++)
        for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
    for (int kb0 = 0; kb0 < nb; kb0 += MQ_KB) {
        int b = kb0 + lb;
        u32 v[2][8];
        float d[2] = {0.0f, 0.0f}, mo[2] = {0.0f, 0.0f};
        int sc[2][2] = {{0, 0}, {0, 0}};
        uint4 x[2][2];
        float2 dd[2];
        for (int h = 0; h < 2; h++) {
            for (int i = 0; i < 8; i++) v[h][i] = 0;
            if (wrow[h] && b < nb) mq_unpack<T>(wrow[h], b, v[h], &d[h], &mo[h], sc[h]);
            int tok = lr + 32 * h;
            x[h][0] = x[h][1] = make_uint4(0, 0, 0, 0);
            dd[h] = make_float2(0.0f, 0.0f);
            if (tok < MQ_BN && tok < nc && b < nb) {
                const uint4* src = (const uint4*)(q + ((long long)tok * nb + b) * 32);
                x[h][0] = src[0];
                x[h][1] = src[1];
                dd[h] = *(const float2*)(ds + 2 * ((long long)tok * nb + b));
            }
        }
        for (int h = 0; h < 2; h++) {
            int rr = lr + 32 * h;
            uint4* dst = (uint4*)(sw + rr * MQ_LD + lb * 8);
            dst[0] = make_uint4(v[h][0], v[h][1], v[h][2], v[h][3]);
            dst[1] = make_uint4(v[h][4], v[h][5], v[h][6], v[h][7]);
            swd[rr][lb] = d[h];
            swm[rr][lb] = mo[h];
            ssc[rr][lb][0] = (signed char)sc[h][0];
            ssc[rr][lb][1] = (signed char)sc[h][1];
            if (rr >= MQ_BN) continue;
            uint4* adst = (uint4*)(sa + rr * MQ_LD + lb * 8);
            adst[0] = x[h][0];
            adst[1] = x[h][1];
            sad[rr][lb] = dd[h].x;
            sas[rr][lb] = dd[h].y;
        }
        __syncthreads();
        int kbn = min(MQ_KB, nb - kb0);
        {
            for (int kb = wn; kb < kbn; kb += 2) {
                int ra = wm * 16 + g;
                const u32* pa = sw + ra * MQ_LD + kb * 8 + t;
                u32 a0 = pa[0], a1 = pa[8 * MQ_LD], a2 = pa[4], a3 = pa[8 * MQ_LD + 4];
                float d0 = swd[ra][kb], d1 = swd[ra + 8][kb];
                float m0 = offs ? swm[ra][kb] : 0.0f, m1 = offs ? swm[ra + 8][kb] : 0.0f;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    int nt = 8 * j;
                    if (nt >= nc) break;
                    const u32* pb = sa + (nt + g) * MQ_LD + kb * 8 + t;
                    int c[4] = {0, 0, 0, 0};
                    if (T == T_Q6_K) {
                        int c1[4] = {0, 0, 0, 0};
                        mma_k16(c, a0, a1, pb[0]);
                        mma_k16(c1, a2, a3, pb[4]);
                        int s00 = ssc[ra][kb][0], s01 = ssc[ra][kb][1];
                        int s10 = ssc[ra + 8][kb][0], s11 = ssc[ra + 8][kb][1];
                        c[0] = s00 * c[0] + s01 * c1[0];
                        c[1] = s00 * c[1] + s01 * c1[1];
                        c[2] = s10 * c[2] + s11 * c1[2];
                        c[3] = s10 * c[3] + s11 * c1[3];
                    } else {
                        mma_k32(c, a0, a1, a2, a3, pb[0], pb[4]);
                    }
                    int tt = nt + 2 * t;
                    float e0 = sad[tt][kb], e1 = sad[tt + 1][kb];
                    acc[j][0] += (float)c[0] * (d0 * e0);
                    acc[j][1] += (float)c[1] * (d0 * e1);
                    acc[j][2] += (float)c[2] * (d1 * e0);
                    acc[j][3] += (float)c[3] * (d1 * e1);
                    if (offs) {
                        float s0 = sas[tt][kb], s1 = sas[tt + 1][kb];
                        acc[j][0] += m0 * s0;
                        acc[j][1] += m0 * s1;
                        acc[j][2] += m1 * s0;
                        acc[j][3] += m1 * s1;
                    }
                }
            }
        }
        __syncthreads();
    }
    if (mq_reduce(acc, (float*)sw)) mq_store(m, acc, row0 + wm * 16, tok0, n);
}

#define MMQ3(name, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        name(const u8* w0, const u8* w1, const u8* w2, long long rb, const signed char* q,     \
             const float* d, float* y0, float* y1, float* y2, int r0, int r1, int r2, int nb,  \
             const float* b0, const float* b1, const float* b2, int n) {                       \
        PDL_WAIT();                                                                            \
        Three m = {{w0, w1, w2}, {y0, y1, y2}, {b0, b1, b2}, {r0, r1, r2}};                    \
        mmq3<T>(m, rb, q, d, nb, n);                                                           \
    }
MMQ3(mmq3_q4_0, T_Q4_0)
MMQ3(mmq3_q4_1, T_Q4_1)
MMQ3(mmq3_q5_0, T_Q5_0)
MMQ3(mmq3_q5_1, T_Q5_1)
MMQ3(mmq3_q8_0, T_Q8_0)
MMQ3(mmq3_q4_k, T_Q4_K)
MMQ3(mmq3_q5_k, T_Q5_K)
MMQ3(mmq3_q6_k, T_Q6_K)

// F16/BF16 weights against f32 activations on the tf32 tensor cores (see above): stages of 64
// values, the weights as floats, the activation as floats split into tf32 hi and lo parts when
// its fragments are read. Each stage's products are summed by the tensor cores into a zeroed
// partial, added to the accumulators in f32 (the tensor cores' own accumulation rounds
// differently, which over long rows cost more than the bound of 1e-5).
template <int T>
__device__ void mmf3(const Three& m, long long row_bytes, const float* x, int cols, int n) {
    __shared__ __align__(16) float sw[MQ_BM * MQ_LD], sx[MQ_BN * MQ_LD];
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    int wm = warp & 3, wn = warp >> 2;
    int row0 = blockIdx.x * MQ_BM, tok0 = blockIdx.y * MQ_BN;
    int nc = min(MQ_BN, n - tok0);
    x += (long long)tok0 * cols;
    // This thread stages values 16·(tid & 3).. of weight row tid >> 2 (and of that token).
    int lr = tid >> 2, lc = (tid & 3) * 16, k, r;
    bool rok = pick(m, row0 + lr, &k, &r);
    const u8* wrow = rok ? m.w[k] + (long long)r * row_bytes : 0;
    const float* xr = x + (long long)lr * cols;
    bool xok = lr < MQ_BN && lr < nc, vec = (cols & 7) == 0;
    float acc[4][4];
    for (int j = 0; j < 4; j++)
        for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
    for (int k0 = 0; k0 < cols; k0 += 64) {
        int c0 = k0 + lc;
        float wv[16], xv[16];
        if (vec && rok && c0 < cols) {
            const uint4* p = (const uint4*)(wrow + 2 * (long long)c0);
            unpack8<T>(p[0], wv);
            if (c0 + 8 < cols) unpack8<T>(p[1], wv + 8);
            else for (int e = 8; e < 16; e++) wv[e] = 0.0f;
        } else {
            const u16* w16 = (const u16*)wrow;
            for (int e = 0; e < 16; e++)
                wv[e] = rok && c0 + e < cols ? (T == T_F16 ? h2f(w16[c0 + e]) : bf2f(w16[c0 + e]))
                                             : 0.0f;
        }
        if (vec && xok && c0 < cols) {
            const float4* p = (const float4*)(xr + c0);
            for (int e = 0; e < 4; e++) {
                float4 a = c0 + 4 * e < cols ? p[e] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                xv[4 * e] = a.x; xv[4 * e + 1] = a.y; xv[4 * e + 2] = a.z; xv[4 * e + 3] = a.w;
            }
        } else {
            for (int e = 0; e < 16; e++) xv[e] = xok && c0 + e < cols ? xr[c0 + e] : 0.0f;
        }
        float4* dw = (float4*)(sw + lr * MQ_LD + lc);
        float4* dx = (float4*)(sx + (lr & (MQ_BN - 1)) * MQ_LD + lc);
        for (int e = 0; e < 4; e++) {
            dw[e] = make_float4(wv[4 * e], wv[4 * e + 1], wv[4 * e + 2], wv[4 * e + 3]);
            if (lr < MQ_BN)
                dx[e] = make_float4(xv[4 * e], xv[4 * e + 1], xv[4 * e + 2], xv[4 * e + 3]);
        }
        __syncthreads();
        {
            float part[4][4];
            for (int j = 0; j < 4; j++)
                for (int e = 0; e < 4; e++) part[j][e] = 0.0f;
            int ks_n = min(8, (cols - k0 + 7) / 8);
            for (int ks = wn; ks < ks_n; ks += 2) {
                const float* pa = sw + (wm * 16 + g) * MQ_LD + ks * 8 + t;
                u32 a0 = __float_as_uint(pa[0]), a1 = __float_as_uint(pa[8 * MQ_LD]);
                u32 a2 = __float_as_uint(pa[4]), a3 = __float_as_uint(pa[8 * MQ_LD + 4]);
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    int nt = 8 * j;
                    if (nt >= nc) break;
                    const float* pb = sx + (nt + g) * MQ_LD + ks * 8 + t;
                    float x0 = pb[0], x1 = pb[4];
                    u32 h0 = to_tf32(x0), h1 = to_tf32(x1);
                    u32 l0 = to_tf32(x0 - __uint_as_float(h0)), l1 = to_tf32(x1 - __uint_as_float(h1));
                    mma_tf32(part[j], a0, a1, a2, a3, l0, l1);
                    mma_tf32(part[j], a0, a1, a2, a3, h0, h1);
                }
            }
            for (int j = 0; j < 4; j++)
                for (int e = 0; e < 4; e++) acc[j][e] += part[j][e];
        }
        __syncthreads();
    }
    if (mq_reduce(acc, (float*)sw)) mq_store(m, acc, row0 + wm * 16, tok0, n);
}

#define MMF3(name, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        name(const u8* w0, const u8* w1, const u8* w2, long long rb, const float* x, float* y0, \
             float* y1, float* y2, int r0, int r1, int r2, int cols, const float* b0,          \
             const float* b1, const float* b2, int n) {                                        \
        PDL_WAIT();                                                                            \
        Three m = {{w0, w1, w2}, {y0, y1, y2}, {b0, b1, b2}, {r0, r1, r2}};                    \
        mmf3<T>(m, rb, x, cols, n);                                                            \
    }
MMF3(mmf3_f16, T_F16)
MMF3(mmf3_bf16, T_BF16)


// ---- RoPE ---------------------------------------------------------------------------------------

// The angle of pair i at position pos (blocks/rope.rs, RopeTable::angle).
__device__ float rope_angle(int pos, int i, int dim, const float* inv_freq, float theta,
                            float linear, float dyn_factor, int dyn_orig) {
    float p = (float)pos / linear;
    float f;
    if (dyn_factor > 0.0f && pos + 1 > dyn_orig) {
        double dd = (double)dim;
        double base = (double)theta *
                      pow((double)dyn_factor * (double)(pos + 1) / (double)dyn_orig -
                              ((double)dyn_factor - 1.0),
                          dd / (dd - 2.0));
        f = (float)(1.0 / pow(base, (double)(2 * i) / dd));
    } else {
        f = inv_freq[i];
    }
    return p * f;
}

// One head per block (grid.x: n_heads query heads then n_kv key heads; grid.y: token t at
// position step[1] + t): with a norm weight, RMSNorm over the head (DMA's q/k norm), then RoPE in
// place; with kc, the key head and the matching value head are also written to the plain KV
// cache at row step[1] + t.
extern "C" __global__ void qk_rope(float* q, float* k, const float* v, int n_heads, int n_kv,
                                   int hd, const float* qw, const float* kw, float eps, int dim,
                                   int pairing, const int* step, const float* inv_freq,
                                   float theta, float linear, float dyn_factor, int dyn_orig,
                                   float* kc, float* vc) {
    PDL_WAIT();
    int hh = blockIdx.x, t = blockIdx.y;
    bool is_q = hh < n_heads;
    int h = is_q ? hh : hh - n_heads;
    float* x = is_q ? q + ((long long)t * n_heads + h) * hd : k + ((long long)t * n_kv + h) * hd;
    const float* w = is_q ? qw : kw;
    __shared__ float sh[256];
    for (int j = threadIdx.x; j < hd; j += blockDim.x) sh[j] = x[j];
    __syncthreads();
    if (w) {
        float ss = 0.0f;
        for (int j = threadIdx.x; j < hd; j += blockDim.x) ss += sh[j] * sh[j];
        ss = block_sum(ss) / (float)hd;
        float inv = 1.0f / sqrtf(ss + eps);
        for (int j = threadIdx.x; j < hd; j += blockDim.x) sh[j] = w[j] * (sh[j] * inv);
        __syncthreads();
    }
    int pos = step[1] + t;
    int half = dim / 2;
    int n_pairs = (hd / dim) * half;
    for (int idx = threadIdx.x; idx < n_pairs; idx += blockDim.x) {
        int chunk = idx / half, i = idx % half;
        float s, c;
        sincosf(rope_angle(pos, i, dim, inv_freq, theta, linear, dyn_factor, dyn_orig), &s, &c);
        int a = chunk * dim + (pairing == 0 ? i : 2 * i);
        int b = chunk * dim + (pairing == 0 ? i + half : 2 * i + 1);
        float x0 = sh[a], x1 = sh[b];
        sh[a] = x0 * c - x1 * s;
        sh[b] = x0 * s + x1 * c;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < hd; j += blockDim.x) x[j] = sh[j];
    if (!is_q && kc) {
        long long kvd = (long long)n_kv * hd;
        long long at = (long long)pos * kvd + (long long)h * hd;
        const float* vh = v + (long long)t * kvd + (long long)h * hd;
        for (int j = threadIdx.x; j < hd; j += blockDim.x) {
            kc[at + j] = sh[j];
            vc[at + j] = vh[j];
        }
    }
}

// Rotates each `dim`-sized chunk of the `width` values at x + t·stride of each of the grid.y
// tokens (token t at position step[1] + t), as blocks/rope.rs does: angle = (pos / linear) *
// inv_freq[i], or with dynamic NTK (dyn_factor > 0, pos + 1 > dyn_orig) the frequency of the
// recomputed base (in double, as the CPU). pairing 0: (i, i + dim/2); 1: (2i, 2i + 1).
extern "C" __global__ void rope(float* x, long long stride, int width, int dim, int pairing,
                                const int* step,
                                const float* inv_freq, float theta, float linear,
                                float dyn_factor, int dyn_orig) {
    PDL_WAIT();
    int t = blockIdx.y;
    int half = dim / 2;
    int n_pairs = (width / dim) * half;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n_pairs) return;
    int chunk = idx / half, i = idx % half;
    int pos = step[1] + t;
    float p = (float)pos / linear;
    float f;
    if (dyn_factor > 0.0f && pos + 1 > dyn_orig) {
        double dd = (double)dim;
        double base = (double)theta *
                      pow((double)dyn_factor * (double)(pos + 1) / (double)dyn_orig -
                              ((double)dyn_factor - 1.0),
                          dd / (dd - 2.0));
        f = (float)(1.0 / pow(base, (double)(2 * i) / dd));
    } else {
        f = inv_freq[i];
    }
    float s, c;
    sincosf(p * f, &s, &c);
    float* h = x + (long long)t * stride + chunk * dim;
    int a = pairing == 0 ? i : 2 * i;
    int b = pairing == 0 ? i + half : 2 * i + 1;
    float x0 = h[a], x1 = h[b];
    h[a] = x0 * c - x1 * s;
    h[b] = x0 * s + x1 * c;
}

// ---- attention ----------------------------------------------------------------------------------

// Appends token t's keys and values (grid.y = t) to a plain KV cache at row step[1] + t.
extern "C" __global__ void kv_append(const float* k, const float* v, float* kc, float* vc,
                                     int kvd, const int* step) {
    PDL_WAIT();
    int t = blockIdx.y;
    long long at = (long long)(step[1] + t) * kvd;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < kvd; i += gridDim.x * blockDim.x) {
        kc[at + i] = k[(long long)t * kvd + i];
        vc[at + i] = v[(long long)t * kvd + i];
    }
}

// The end of an attention part (attn_part, dma_attn), block-wide: with the block's maximum logit
// mx, the exponentials e_j = exp(s_j − mx) of its keys j in [j0, j1) (s_j at e[j − j0], replaced
// by e_j), their sum, and Σ e_j·v_j (value j at vb + j·rs), written as part pi: pm[pi] = mx,
// pl[pi] = Σ e_j, po[pi·hd ..] = Σ e_j·v_j. Keys with e_j = 0 (masked out in dma_attn, or far
// below the maximum) are skipped, their values not read (measured on the H200: the synth
// doge-60m's decode step about 8% shorter, llama-110m's unchanged).
__device__ __forceinline__ void attn_part_finish(float* e, int j0, int j1, float mx,
                                                 const float* vb, long long rs, int hd,
                                                 long long pi, float* pm, float* pl, float* po) {
    __shared__ float part_o[1024];
    float sum = 0.0f;
    for (int j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        float ej = expf(e[j - j0] - mx);
        e[j - j0] = ej;
        sum += ej;
    }
    sum = block_sum(sum);
    int slices = blockDim.x / hd;
    if (slices < 1) slices = 1;
    int sl = threadIdx.x / hd, i = threadIdx.x % hd;
    float acc = 0.0f;
    if (sl < slices)
        for (int j = j0 + sl; j < j1; j += slices) {
            float ej = e[j - j0];
            if (ej != 0.0f) acc += ej * vb[(long long)j * rs + i];
        }
    if (sl < slices) part_o[sl * hd + i] = acc;
    __syncthreads();
    if (threadIdx.x < hd) {
        float o = 0.0f;
        for (int k = 0; k < slices; k++) o += part_o[k * hd + threadIdx.x];
        po[pi * hd + threadIdx.x] = o;
    }
    if (threadIdx.x == 0) {
        pm[pi] = mx;
        pl[pi] = sum;
    }
}

// Attention of query head h of token t over the keys of its KV head g = h / group,
// out = Σ_j softmax_j(q·k_j·scale + bias_j) v_j, split over the keys (flash-decoding): block
// (h, t - t0, part) takes keys [part·span, (part+1)·span) and writes its running max pm, sum of
// exponentials pl and unnormalized output po ([t][h][part], po with hd values); an empty part
// writes pl = 0. attn_combine merges the parts. Key j of head g is at kc + g·head_stride +
// j·row_stride; the number of keys is lens[g], or step[1] + 1 + t when lens is NULL (plain causal
// attention of token t); bias (DMA scores) is [g][bias_stride]; att: [tokens][n_heads][max_keys]
// scratch for the weights.
extern "C" __global__ void attn_part(const float* q, const float* kc, const float* vc,
                                     float* att, int group, int hd, long long head_stride,
                                     int row_stride, const int* lens, const float* bias,
                                     int bias_stride, int max_keys, float scale,
                                     const int* step, int t0, int span, int n_parts, float* pm,
                                     float* pl, float* po) {
    PDL_WAIT();
    int h = blockIdx.x, t = t0 + blockIdx.y, part = blockIdx.z, nh = gridDim.x;
    int g = h / group;
    int n = lens ? lens[g] : step[1] + 1 + t;
    int j0 = part * span, j1 = min(n, j0 + span);
    long long pi = ((long long)t * nh + h) * n_parts + part;
    if (j0 >= j1) {
        if (threadIdx.x == 0) {
            pm[pi] = -INFINITY;
            pl[pi] = 0.0f;
        }
        return;
    }
    const float* qh = q + ((long long)t * nh + h) * hd;
    const float* kb = kc + g * head_stride;
    const float* vb = vc + g * head_stride;
    float* a = att + ((long long)t * nh + h) * max_keys;
    __shared__ float qs[256];
    for (int i = threadIdx.x; i < hd; i += blockDim.x) qs[i] = qh[i];
    __syncthreads();
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float mx = -INFINITY;
    for (int j = j0 + w; j < j1; j += nw) {
        const float* kj = kb + (long long)j * row_stride;
        float s = 0.0f;
        for (int i = lane; i < hd; i += 32) s += qs[i] * kj[i];
        s = warp_sum(s) * scale + (bias ? bias[g * bias_stride + j] : 0.0f);
        if (lane == 0) a[j] = s;
        mx = fmaxf(mx, s);
    }
    mx = block_max(mx);
    attn_part_finish(a + j0, j0, j1, mx, vb, row_stride, hd, pi, pm, pl, po);
}

// Merges attn_part's parts of block (h, t - t0): out = Σ_p e^(m_p − M) o_p / Σ_p e^(m_p − M) l_p,
// and with q8 the output's int8 blocks (hd a multiple of 32).
extern "C" __global__ void attn_combine(const float* pm, const float* pl, const float* po,
                                        int n_parts, int hd, float* out, int t0,
                                        signed char* q8, float* d8) {
    PDL_WAIT();
    int h = blockIdx.x, t = t0 + blockIdx.y, nh = gridDim.x;
    long long base = ((long long)t * nh + h) * n_parts;
    float M = -INFINITY;
    for (int p = 0; p < n_parts; p++)
        if (pl[base + p] > 0.0f) M = fmaxf(M, pm[base + p]);
    float L = 0.0f;
    for (int p = 0; p < n_parts; p++)
        if (pl[base + p] > 0.0f) L += pl[base + p] * expf(pm[base + p] - M);
    __shared__ float res[256];
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float o = 0.0f;
        for (int p = 0; p < n_parts; p++)
            if (pl[base + p] > 0.0f) o += po[(base + p) * hd + i] * expf(pm[base + p] - M);
        o /= L;
        res[i] = o;
        out[((long long)t * nh + h) * hd + i] = o;
    }
    if (!q8) return;
    __syncthreads();
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    long long b0 = ((long long)t * nh + h) * hd / 32;
    for (int b = w; b < hd / 32; b += nw) q8_block(res[b * 32 + lane], q8, d8, b0 + b, lane);
}

// DMA: offers token t's key and value of KV head g (= blockIdx.x) to the bounded cache with
// score exp(A_g · softplus(dt_g + bias_g)); evicts the lowest score (ties: the oldest), and
// drops a newcomer that scores below every entry (blocks/dma.rs, DmaCache::insert).
// The score projection (row g of dt_w, of type dt_ty) is applied here to all KV heads' values
// of token t.
// The DMA score of KV head g for token t's values (all KV heads', kvd of them): the block's
// threads split the dt row, so a block of the same size gives the same bits in dma_insert and
// dma_scores.
__device__ float dma_score(const float* v, int dt_ty, const u8* dt_w, long long dt_rb,
                           const float* dt_bias, const float* a, int kvd, int g, int t) {
    const u8* wrow = dt_w + (long long)g * dt_rb;
    float d = 0.0f;
    for (int j = threadIdx.x; j < kvd; j += blockDim.x)
        d += dq(dt_ty, wrow, j) * v[(long long)t * kvd + j];
    d = block_sum(d) + (dt_bias ? dt_bias[g] : 0.0f);
    return expf(a[g] * softplus(d));
}

extern "C" __global__ void dma_insert(const float* k, const float* v, int dt_ty, const u8* dt_w,
                                      long long dt_rb, const float* dt_bias, const float* a,
                                      float* kc, float* vc, float* score, int* pos, int* lens,
                                      int kw, int hd, int n_kv, int t, const int* step) {
    PDL_WAIT();
    int g = blockIdx.x;
    int kvd = n_kv * hd;
    float sc = dma_score(v, dt_ty, dt_w, dt_rb, dt_bias, a, kvd, g, t);
    __shared__ int slot;
    __shared__ float bs[1024];
    __shared__ int bi[1024];
    int len = lens[g];
    float* s = score + (long long)g * kw;
    int* ps = pos + (long long)g * kw;
    if (len < kw) {
        if (threadIdx.x == 0) slot = len;
    } else {
        // Lowest score, ties: oldest position.
        float best = INFINITY;
        int bidx = -1;
        for (int i = threadIdx.x; i < kw; i += blockDim.x) {
            if (bidx < 0 || s[i] < best || (s[i] == best && ps[i] < ps[bidx])) {
                best = s[i];
                bidx = i;
            }
        }
        bs[threadIdx.x] = best;
        bi[threadIdx.x] = bidx;
        __syncthreads();
        for (int o = blockDim.x / 2; o > 0; o >>= 1) {
            if (threadIdx.x < o) {
                float b2 = bs[threadIdx.x + o];
                int i2 = bi[threadIdx.x + o];
                int i1 = bi[threadIdx.x];
                if (i2 >= 0 && (i1 < 0 || b2 < bs[threadIdx.x] ||
                                (b2 == bs[threadIdx.x] && ps[i2] < ps[i1]))) {
                    bs[threadIdx.x] = b2;
                    bi[threadIdx.x] = i2;
                }
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) slot = sc < bs[0] ? -1 : bi[0];
    }
    __syncthreads();
    int sl = slot;
    if (sl < 0) return;
    long long at = ((long long)g * kw + sl) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        kc[at + i] = k[(long long)t * kvd + g * hd + i];
        vc[at + i] = v[(long long)t * kvd + g * hd + i];
    }
    if (threadIdx.x == 0) {
        s[sl] = sc;
        ps[sl] = step[1] + t;
        if (len < kw) lens[g] = len + 1;
    }
}

// ---- DMA over a batch ---------------------------------------------------------------------------
// A batch of n tokens (positions step[1]..) goes through a DMA layer in five launches instead of
// n inserts and n attentions: dma_scores, dma_plan, dma_attn + attn_combine, dma_commit. The
// score of a key depends on its own values only, so the greedy evict-min cache holds, after each
// insert, exactly the keep_window (kw) best keys offered so far under the order (score, then
// position: the newer wins ties; blocks/dma.rs). Query t of the batch therefore sees a key x iff
// x was offered by t and fewer than kw keys offered by t rank above it: each key is present during
// an interval of the batch, which dma_plan computes, and the attention masks the keys outside it.

// Scores of every batch token for every KV head: bsc[t·n_kv + g], block (g, t) of 256 threads
// (the size dma_insert runs with, so the same bits).
extern "C" __global__ void dma_scores(const float* v, int dt_ty, const u8* dt_w, long long dt_rb,
                                      const float* dt_bias, const float* a, int n_kv, int hd,
                                      float* bsc) {
    PDL_WAIT();
    int g = blockIdx.x, t = blockIdx.y;
    float sc = dma_score(v, dt_ty, dt_w, dt_rb, dt_bias, a, n_kv * hd, g, t);
    if (threadIdx.x == 0) bsc[(long long)t * n_kv + g] = sc;
}

// The sort key of an entry: its score in f32::total_cmp order, then its position.
__device__ __forceinline__ unsigned long long dma_key(float s, int p) {
    unsigned b = __float_as_uint(s);
    b ^= (b >> 31) ? 0xffffffffu : 0x80000000u;
    return ((unsigned long long)b << 32) | (unsigned)p;
}

// The sequential inserts of n batch tokens into KV head g's cache (= blockIdx.x), decided at once
// (dma_insert: evict the lowest score, ties the oldest, drop a newcomer below every entry). With
// L entries before the batch, at most n inserts can only evict the min(L, n) lowest entries
// (entries leave in increasing order), so only those and the n batch tokens are candidates. For a
// candidate x offered at time t_x (-1 for a cache entry), above(x, t) counts the keys offered by
// batch time t (the cache's and tokens 0..=t) that rank above it; x is in the cache at t ≥ t_x iff
// above(x, t) < kw, and leaves at the first t where it reaches kw (a token that does at its own
// t is dropped). A token that enters a full cache takes the slot of the one key leaving at its
// time. Writes: olen[g] = L; vend[g][slot] = the first batch time the entry is gone (n: it stays,
// 0: empty slot); bend[g][t], the same for token t (t: dropped); bslot[g][t], token t's slot; and
// the new lens[g]. dma_commit then stores the tokens that stay, after the attention has read the
// old entries. Positions of the batch follow the cache's (the session position only grows).
// Dynamic shared memory: dma_plan_smem bytes (src/cuda/mod.rs), up to 1024 threads.
extern "C" __global__ void __launch_bounds__(1024)
    dma_plan(const float* bsc, const float* score, const int* pos, int* lens, int kw, int n_kv,
             int n, const int* step, int* olen, int* vend, int* bend, int* bslot) {
    PDL_WAIT();
    extern __shared__ unsigned long long dma_sh[];
    int g = blockIdx.x, tid = threadIdx.x, bd = blockDim.x;
    int L = lens[g];
    int p0 = step[1];
    int N2 = 1;
    while (N2 < L) N2 <<= 1;
    unsigned long long* skey = dma_sh;  // [N2] the cache's keys, sorted
    unsigned long long* bkey = skey + N2;  // [n]
    int* bev = (int*)(bkey + n);  // [n] when token t leaves
    int* oev = bev + n;  // [n] when the sorted entry r < min(L, n) leaves
    int* slot = oev + n;  // [n]
    int* evby = slot + n;  // [n] the candidate leaving at time t
    unsigned short* sslot = (unsigned short*)(evby + n);  // [N2] slots of skey
    const float* s = score + (long long)g * kw;
    const int* ps = pos + (long long)g * kw;
    for (int i = tid; i < N2; i += bd) {
        skey[i] = i < L ? dma_key(s[i], ps[i]) : ~0ull;
        sslot[i] = i < L ? (unsigned short)i : 0xffff;
    }
    for (int u = tid; u < n; u += bd) {
        bkey[u] = dma_key(bsc[(long long)u * n_kv + g], p0 + u);
        bev[u] = n;
        evby[u] = -1;
    }
    __syncthreads();
    int P = min(L, n);
    if (L + n > kw) {
        // Bitonic sort of (key, slot), ascending.
        for (int k = 2; k <= N2; k <<= 1) {
            for (int j = k >> 1; j > 0; j >>= 1) {
                for (int p = tid; p < N2 / 2; p += bd) {
                    int i = (p / j) * 2 * j + (p % j), ij = i + j;
                    bool up = (i & k) == 0;
                    unsigned long long a0 = skey[i], a1 = skey[ij];
                    bool gt = a0 > a1 || (a0 == a1 && sslot[i] > sslot[ij]);
                    if (gt == up) {
                        skey[i] = a1;
                        skey[ij] = a0;
                        unsigned short t0 = sslot[i];
                        sslot[i] = sslot[ij];
                        sslot[ij] = t0;
                    }
                }
                __syncthreads();
            }
        }
        for (int c = tid; c < P + n; c += bd) {
            bool orig = c < P;
            int u = orig ? -1 : c - P;
            unsigned long long key = orig ? skey[c] : bkey[u];
            int above;
            if (orig) {
                above = L - 1 - c;
            } else {
                // Entries at or below the token (a newer key wins ties).
                int lo = 0, hi = L;
                while (lo < hi) {
                    int mid = (lo + hi) >> 1;
                    if (skey[mid] <= key) lo = mid + 1;
                    else hi = mid;
                }
                above = L - lo;
            }
            int ev = n;
            for (int t = 0; t < n; t++) {
                if (t != u && (orig ? bkey[t] >= key : bkey[t] > key)) above++;
                if (t >= u && above >= kw) {
                    ev = t;
                    break;
                }
            }
            if (orig) oev[c] = ev;
            else bev[u] = ev;
            if (ev < n && ev != u) evby[ev] = c;
        }
        __syncthreads();
    }
    if (tid == 0) {
        for (int t = 0; t < n; t++) {
            if (L + t < kw) {
                slot[t] = L + t;
            } else if (bev[t] == t) {
                slot[t] = -1;
            } else {
                int y = evby[t];
                slot[t] = y < 0 ? -1 : y < P ? (int)sslot[y] : slot[y - P];
            }
        }
    }
    for (int i = tid; i < kw; i += bd) vend[(long long)g * kw + i] = i < L ? n : 0;
    __syncthreads();
    if (L + n > kw)
        for (int r = tid; r < P; r += bd)
            if (oev[r] < n) vend[(long long)g * kw + sslot[r]] = oev[r];
    for (int u = tid; u < n; u += bd) {
        bend[(long long)g * n + u] = bev[u];
        bslot[(long long)g * n + u] = slot[u];
    }
    if (tid == 0) {
        olen[g] = L;
        lens[g] = min(kw, L + n);
    }
}

// Attention of the batch's query head h of token t (block (h, t, part)) over its KV head g's
// cache as dma_plan left it visible: parts 0..n_parts-2 take cache slots [part·span, ..) below
// olen[g], slot j seen while t < vend[g·kw + j]; the last part takes the batch's keys u ≤ t
// (k, v: [n][n_kv·hd] after norm and RoPE), seen while t < bend[g·n + u]. Each key's DMA score
// (the cache's, or bsc for the batch) is added to its logit. Writes attn_part's parts for
// attn_combine.
extern "C" __global__ void dma_attn(const float* q, const float* kc, const float* vc,
                                    const float* score, const float* k, const float* v,
                                    const float* bsc, const int* olen, const int* vend,
                                    const int* bend, int group, int hd, int n_kv, int kw,
                                    float scale, int span, int n_parts, float* pm, float* pl,
                                    float* po) {
    PDL_WAIT();
    int h = blockIdx.x, t = blockIdx.y, part = blockIdx.z, nh = gridDim.x, n = gridDim.y;
    int g = h / group;
    long long kvd = (long long)n_kv * hd;
    bool cache = part < n_parts - 1;
    int j0 = cache ? part * span : 0;
    int j1 = cache ? min(olen[g], j0 + span) : t + 1;
    const float* kb = cache ? kc + (long long)g * kw * hd : k + (long long)g * hd;
    const float* vb = cache ? vc + (long long)g * kw * hd : v + (long long)g * hd;
    long long rs = cache ? hd : kvd;
    const float* bias = cache ? score + (long long)g * kw : bsc + g;
    int bs = cache ? 1 : n_kv;
    const int* end = cache ? vend + (long long)g * kw : bend + (long long)g * n;
    long long pi = ((long long)t * nh + h) * n_parts + part;
    __shared__ float qs[256];
    __shared__ float a[256];
    if (j0 >= j1) {
        if (threadIdx.x == 0) {
            pm[pi] = -INFINITY;
            pl[pi] = 0.0f;
        }
        return;
    }
    const float* qh = q + ((long long)t * nh + h) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) qs[i] = qh[i];
    __syncthreads();
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float mx = -INFINITY;
    for (int j = j0 + w; j < j1; j += nw) {
        float sj = -INFINITY;
        if (t < end[j]) {
            const float* kj = kb + (long long)j * rs;
            float d = 0.0f;
            for (int i = lane; i < hd; i += 32) d += qs[i] * kj[i];
            sj = warp_sum(d) * scale + bias[(long long)j * bs];
        }
        if (lane == 0) a[j - j0] = sj;
        mx = fmaxf(mx, sj);
    }
    mx = block_max(mx);
    if (mx == -INFINITY) {
        if (threadIdx.x == 0) {
            pm[pi] = -INFINITY;
            pl[pi] = 0.0f;
        }
        return;
    }
    attn_part_finish(a, j0, j1, mx, vb, rs, hd, pi, pm, pl, po);
}

// Stores batch token t's key, value, score and position (block (g, t)) in the slot dma_plan gave
// it, if it is still in the cache at the end of the batch (bend = n).
extern "C" __global__ void dma_commit(const float* k, const float* v, const float* bsc,
                                      const int* bend, const int* bslot, float* kc, float* vc,
                                      float* score, int* pos, int kw, int hd, int n_kv, int n,
                                      const int* step) {
    PDL_WAIT();
    int g = blockIdx.x, t = blockIdx.y;
    if (bend[(long long)g * n + t] != n) return;
    int sl = bslot[(long long)g * n + t];
    if (sl < 0) return;
    long long kvd = (long long)n_kv * hd;
    long long at = ((long long)g * kw + sl) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        kc[at + i] = k[t * kvd + g * hd + i];
        vc[at + i] = v[t * kvd + g * hd + i];
    }
    if (threadIdx.x == 0) {
        score[(long long)g * kw + sl] = bsc[(long long)t * n_kv + g];
        pos[(long long)g * kw + sl] = step[1] + t;
    }
}

// ---- SSD (Mamba-2) ------------------------------------------------------------------------------

// Causal depthwise conv of token t (grid.y) over the conv state, then SiLU; shifts the state.
// Tokens must run in order (one launch per token, t the row in the batch).
extern "C" __global__ void ssd_conv(const float* zx, int zx_stride, int x_off, float* state,
                                    const float* w, const float* bias, float* xbc, int cd,
                                    int dconv, int t) {
    PDL_WAIT();
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= cd) return;
    const float* in = zx + (long long)t * zx_stride + x_off;
    float* hist = state + (long long)ch * (dconv - 1);
    const float* taps = w + (long long)ch * dconv;
    float acc = bias ? bias[ch] : 0.0f;
    for (int k = 0; k < dconv - 1; k++) acc += taps[k] * hist[k];
    float cur = in[ch];
    acc += taps[dconv - 1] * cur;
    for (int k = 0; k + 1 < dconv - 1; k++) hist[k] = hist[k + 1];
    if (dconv > 1) hist[dconv - 2] = cur;
    xbc[(long long)t * cd + ch] = silu(acc);
}

// One token's SSM step, blocks (head, part of its rows): state = state·exp(Δ·A) + Δ·x·Bᵀ, y = state·C + D·x.
// xbc: [x (d_inner) | B (groups·n) | C (groups·n)]; dt_raw at zx[t·zx_stride + dt_off + h].
extern "C" __global__ void ssd_step(const float* xbc, int cd, const float* zx, int zx_stride,
                                    int dt_off, const float* dt_bias, const float* a,
                                    const float* dskip, float* ssm, float* y, int p, int n,
                                    int n_groups, int d_inner, int t) {
    PDL_WAIT();
    int h = blockIdx.x, nh = gridDim.x;
    int g = h / (nh / n_groups);
    const float* row = xbc + (long long)t * cd;
    const float* x = row + h * p;
    const float* B = row + d_inner + g * n;
    const float* C = row + d_inner + n_groups * n + g * n;
    float dt = softplus(zx[(long long)t * zx_stride + dt_off + h] + dt_bias[h]);
    float da = expf(dt * a[h]);
    // grid.y splits the head's rows over several blocks.
    int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    int w = blockIdx.y * nw + (threadIdx.x >> 5);
    for (int i = w; i < p; i += gridDim.y * nw) {
        float xi = x[i];
        float dtx = dt * xi;
        float* st = ssm + ((long long)h * p + i) * n;
        float acc = 0.0f;
        for (int k = lane; k < n; k += 32) {
            float s = st[k] * da + dtx * B[k];
            st[k] = s;
            acc += s * C[k];
        }
        acc = warp_sum(acc);
        if (lane == 0) y[(long long)t * d_inner + h * p + i] = acc + dskip[h] * xi;
    }
}

// The whole SSD step of token t (at position step[1] + t) in one launch, blocks (head h, part
// of its rows): the causal conv and SiLU of the head's x channels and of its group's B and C
// (recomputed by each head of the group), RoPE on B and C (inv_freq non-NULL), Δ, and the state
// update of its rows, y = state·C + D·x. The conv state is double-buffered by position parity
// ([2][conv_dim][d_conv-1]): every block reads buffer pos & 1 and the owner of a channel writes
// its next history to the other buffer, so heads sharing B and C never race.
// RoPE (pairing (i, i + n/2)) at position pos on B and C of one group, bc = [B | C] in shared
// memory; block-wide, ends with __syncthreads.
// f_first: the thread's first frequency loaded ahead (rope_freq), so its latency overlaps other
// work.
__device__ void rope_bc(float* bc, int n, int pos, const float* inv_freq, float f_first) {
    int half = n / 2;
    for (int k = threadIdx.x; k < 2 * half; k += blockDim.x) {
        int v = k / half, i = k % half;
        float s, c;
        sincosf((float)pos * (k == (int)threadIdx.x ? f_first : inv_freq[i]), &s, &c);
        float* vec = bc + v * n;
        float x0 = vec[i], x1 = vec[i + half];
        vec[i] = x0 * c - x1 * s;
        vec[i + half] = x0 * s + x1 * c;
    }
    __syncthreads();
}

// The frequency of the thread's first pair in rope_bc.
__device__ __forceinline__ float rope_freq(const float* inv_freq, int n) {
    int half = n / 2;
    return inv_freq && (int)threadIdx.x < 2 * half ? inv_freq[threadIdx.x % half] : 0.0f;
}

// Channel ch's causal conv: acc + taps·[history, cur] (history: w1 = d_conv - 1 values, taps:
// d_conv), and the next history into `next` when it is non-NULL. Up to 4 history values (d_conv
// 4 is every released Mamba-2's) are loaded at once, clamped as in rowdot2; longer ones one by
// one. The same order of summation either way.
__device__ __forceinline__ float conv_ch(const float* hist, const float* taps, float acc,
                                         float cur, int w1, float* next) {
    if (w1 >= 1 && w1 <= 4) {
        float hv[4], tv[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int jj = min(j, w1 - 1);
            hv[j] = hist[jj];
            tv[j] = taps[jj];
        }
        float tl = taps[w1];
#pragma unroll
        for (int j = 0; j < 4; j++)
            if (j < w1) acc += tv[j] * hv[j];
        acc += tl * cur;
        if (next) {
#pragma unroll
            for (int j = 0; j < 3; j++)
                if (j + 1 < w1) next[j] = hv[j + 1];
            next[w1 - 1] = cur;
        }
        return acc;
    }
    for (int j = 0; j < w1; j++) acc += taps[j] * hist[j];
    acc += taps[w1] * cur;
    if (next) {
        for (int j = 0; j + 1 < w1; j++) next[j] = hist[j + 1];
        if (w1 > 0) next[w1 - 1] = cur;
    }
    return acc;
}

__device__ __forceinline__ unsigned long long gtime() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

#ifdef FUSED_PHASES
// Profiling: this block's record of the stage that ends at the next barrier (8 words).
__shared__ unsigned long long* ph_rec;
#endif

// Profiling (compiled with FUSED_PHASES, CHEEMS_CUDA_FUSED_TIMES=2): mark j of ssd_decode's
// current stage. 0: its input is in shared memory, 1: its work is done (both when every thread
// has got there), 2 and 3: the barrier's arrival and departure (grid_sync), 4-7: when thread 0
// gets to a point (4: the stage's first loads returned; in the products 5: before its first
// dot products, 6: after them, 7: after their stores; in the SSD step 5: B, C and x after the
// conv, 6: the state rows done). tools/cuda/phases.py reads them.
__device__ __forceinline__ void phase_mark(int j, bool all = true) {
#ifdef FUSED_PHASES
    if (all) __syncthreads();
    if (threadIdx.x == 0 && ph_rec) ph_rec[j] = gtime();
#endif
}

// The rows [r0, r1) of a head's p that part `part` of `parts` takes (empty for the last parts when
// parts does not divide p evenly).
__device__ __forceinline__ void item_rows(int part, int parts, int p, int* r0, int* r1) {
    int per = (p + parts - 1) / parts;
    *r0 = part * per;
    *r1 = min(p, *r0 + per);
}

// The body of ssd_fused for head h and part `part` of `parts` (also run by ssd_decode).
// Block-uniform: every thread of the block calls it. zx is read past L1 (ld.cg): within
// ssd_decode it was written by other blocks of the same launch.
__device__ void ssd_item(int h, int nh, int part, int parts, const float* zx, int zx_stride,
                         float* conv, const float* cw, const float* cb, const float* inv_freq,
                         const float* dt_bias, const float* a, const float* dskip, float* ssm,
                         float* y, int p, int n, int n_groups, int d_inner, int dconv, int t,
                         const int* step) {
    int hpg = nh / n_groups;
    int g = h / hpg;
    int cd = d_inner + 2 * n_groups * n;
    int pos = step[1] + t;
    int w1 = dconv - 1;
    const float* hold = conv + (long long)(pos & 1) * cd * w1;
    float* hnew = conv + (long long)((pos + 1) & 1) * cd * w1;
    const float* in = zx + (long long)t * zx_stride + d_inner;  // xBC before the conv
    __shared__ float bc[512];
    __shared__ float xs[256];
    int r0, r1;
    item_rows(part, parts, p, &r0, &r1);
    bool writer_bc = (h % hpg == 0) && part == 0;
    // What does not depend on the conv, loaded first so its latency overlaps the conv's: Δ's
    // input and the head's scalars, and the state of the warp's first row (n <= 256). Δ's
    // input is one load per block, read after the conv's __syncthreads (loaded by each of 512
    // threads, it made every block ask one L2 line 16 times, 1,920 requests per stage).
    int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    int i_first = r0 + (threadIdx.x >> 5);
    __shared__ float dt_sh;
    if (threadIdx.x == 0) dt_sh = __ldcg(zx + (long long)t * zx_stride + d_inner + cd + h);
    float dt_b = dt_bias[h], a_h = a[h], d_h = dskip[h];
    float s_first[8];
    {
        // Clamped (see rowdot2): a part without rows, or lanes past n, load a row's last value.
        const float* st = ssm + ((long long)h * p + max(min(i_first, r1 - 1), 0)) * n;
#pragma unroll
        for (int kk = 0; kk < 8; kk++) s_first[kk] = st[min(lane + 32 * kk, n - 1)];
    }
    float f_first = rope_freq(inv_freq, n);
    // B then C of group g (2n channels), then the head's x channels of rows r0..r1: one pass,
    // so every thread's loads go out together.
    int nx = max(r1 - r0, 0);
    for (int k = threadIdx.x; k < 2 * n + nx; k += blockDim.x) {
        bool is_bc = k < 2 * n;
        int ch = !is_bc ? h * p + r0 + (k - 2 * n)
                 : d_inner + (k < n ? g * n + k : n_groups * n + g * n + (k - n));
        float cur = __ldcg(in + ch);
        float v = conv_ch(hold + (long long)ch * w1, cw + (long long)ch * dconv,
                          cb ? cb[ch] : 0.0f, cur, w1,
                          !is_bc || writer_bc ? hnew + (long long)ch * w1 : nullptr);
        if (is_bc) bc[k] = silu(v);
        else xs[k - 2 * n] = silu(v);
    }
    phase_mark(4, false);
    __syncthreads();
    phase_mark(5, false);
    if (inv_freq) rope_bc(bc, n, pos, inv_freq, f_first);
    float dt = softplus(dt_sh + dt_b);
    float da = expf(dt * a_h);
    for (int i = i_first; i < r1; i += nw) {
        float xi = xs[i - r0];
        float dtx = dt * xi;
        float* st = ssm + ((long long)h * p + i) * n;
        float acc = 0.0f;
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            int k = lane + 32 * kk;
            if (k < n) {
                float sv = (i == i_first ? s_first[kk] : st[k]) * da + dtx * bc[k];
                st[k] = sv;
                acc += sv * bc[n + k];
            }
        }
        acc = warp_sum(acc);
        if (lane == 0) y[(long long)t * d_inner + h * p + i] = acc + d_h * xi;
    }
    phase_mark(6, false);
}

extern "C" __global__ void ssd_fused(const float* zx, int zx_stride, float* conv,
                                     const float* cw, const float* cb, const float* inv_freq,
                                     const float* dt_bias, const float* a, const float* dskip,
                                     float* ssm, float* y, int p, int n, int n_groups,
                                     int d_inner, int dconv, int t, const int* step) {
    PDL_WAIT();
#ifdef FUSED_PHASES
    if (threadIdx.x == 0) ph_rec = 0;
    __syncthreads();
#endif
    ssd_item(blockIdx.x, gridDim.x, blockIdx.y, gridDim.y, zx, zx_stride, conv, cw, cb,
             inv_freq, dt_bias, a, dskip, ssm, y, p, n, n_groups, d_inner, dconv, t, step);
}

// The SSD recurrence over all `ntok` tokens of a batch (token t at position step[1] + t) in one
// launch: block (head h, part of its rows), one warp per row, the state rows held in registers
// from the first token to the last. Per token, as ssd_item: the causal conv (inputs before the
// batch from conv buffer step[1] & 1, later ones from zx) and SiLU of the group's B and C and
// of the block's x channels, RoPE on B and C, Δ, the state update and y. The conv buffer is only
// read; ssd_conv_hist writes the next history after this launch.
#define SCAN_K 8  // d_state <= 32 * SCAN_K
extern "C" __global__ void ssd_scan(const float* zx, int zx_stride, const float* conv,
                                    const float* cw, const float* cb, const float* inv_freq,
                                    const float* dt_bias, const float* a, const float* dskip,
                                    float* ssm, float* y, int p, int n, int n_groups, int d_inner,
                                    int dconv, int ntok, const int* step) {
    PDL_WAIT();
    int h = blockIdx.x, nh = gridDim.x;
    int g = h / (nh / n_groups);
    int cd = d_inner + 2 * n_groups * n;
    int pos0 = step[1];
    int w1 = dconv - 1;
    const float* hold = conv + (long long)(pos0 & 1) * cd * w1;
    __shared__ float bc[512];
    __shared__ float xs[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int r0 = blockIdx.y * nw;
    int i = r0 + warp;  // this warp's row
    bool row = i < p;
    float st[SCAN_K];
    const float* srow = ssm + ((long long)h * p + (row ? i : 0)) * n;
#pragma unroll
    for (int k = 0; k < SCAN_K; k++) st[k] = row && lane + 32 * k < n ? srow[lane + 32 * k] : 0.0f;
    float da_h = a[h], dtb = dt_bias[h], dsk = dskip[h];
    for (int t = 0; t < ntok; t++) {
        const float* in = zx + d_inner;  // xBC before the conv, row s at in + s * zx_stride
        // B then C of group g, and this block's x channels.
        int nb = 2 * n, nx = min(nw, p - r0);
        for (int k = threadIdx.x; k < nb + nx; k += blockDim.x) {
            int ch = k < nb ? d_inner + (k < n ? g * n + k : n_groups * n + g * n + (k - n))
                            : h * p + r0 + (k - nb);
            const float* taps = cw + (long long)ch * dconv;
            float acc = cb ? cb[ch] : 0.0f;
            for (int j = 0; j <= w1; j++) {
                int s = t - w1 + j;
                float u = s >= 0 ? in[(long long)s * zx_stride + ch] : hold[(long long)ch * w1 + (w1 + s)];
                acc += taps[j] * u;
            }
            if (k < nb) bc[k] = silu(acc);
            else xs[k - nb] = silu(acc);
        }
        __syncthreads();
        if (inv_freq) rope_bc(bc, n, pos0 + t, inv_freq, rope_freq(inv_freq, n));
        float dt = softplus(zx[(long long)t * zx_stride + d_inner + cd + h] + dtb);
        float da = expf(dt * da_h);
        if (row) {
            float xi = xs[warp];
            float dtx = dt * xi;
            float acc = 0.0f;
#pragma unroll
            for (int k = 0; k < SCAN_K; k++) {
                int kk = lane + 32 * k;
                if (kk < n) {
                    st[k] = st[k] * da + dtx * bc[kk];
                    acc += st[k] * bc[n + kk];
                }
            }
            acc = warp_sum(acc);
            if (lane == 0) y[(long long)t * d_inner + h * p + i] = acc + dsk * xi;
        }
        __syncthreads();
    }
    if (row) {
        float* wrow = ssm + ((long long)h * p + i) * n;
#pragma unroll
        for (int k = 0; k < SCAN_K; k++)
            if (lane + 32 * k < n) wrow[lane + 32 * k] = st[k];
    }
}

// After ssd_scan over ntok tokens from position pos0 = step[1]: each channel's conv history
// (its last d_conv-1 inputs) into buffer (pos0 + ntok) & 1, read from buffer pos0 & 1 and zx.
// One thread per channel, which reads its whole history before writing (the buffers are the
// same one when ntok is even).
extern "C" __global__ void ssd_conv_hist(const float* zx, int zx_stride, float* conv, int cd,
                                         int d_inner, int dconv, int ntok, const int* step) {
    PDL_WAIT();
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= cd) return;
    int pos0 = step[1], w1 = dconv - 1;
    const float* hold = conv + (long long)(pos0 & 1) * cd * w1 + (long long)ch * w1;
    float* hnew = conv + (long long)((pos0 + ntok) & 1) * cd * w1 + (long long)ch * w1;
    float v[8];
    for (int j = 0; j < w1 && j < 8; j++) {
        int s = ntok - w1 + j;
        v[j] = s >= 0 ? zx[(long long)s * zx_stride + d_inner + ch] : hold[w1 + s];
    }
    for (int j = 0; j < w1 && j < 8; j++) hnew[j] = v[j];
}

// The causal conv and SiLU of every channel of all `ntok` tokens of a batch at once (grid
// (channel blocks, token)): out[t][ch] for ch < cd, inputs before the batch from conv buffer
// step[1] & 1 (as ssd_scan). The conv buffer is only read (ssd_conv_hist writes it after).
extern "C" __global__ void ssd_conv_all(const float* zx, int zx_stride, const float* conv,
                                        const float* cw, const float* cb, int cd, int d_inner,
                                        int dconv, const int* step, float* out) {
    PDL_WAIT();
    int ch = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (ch >= cd) return;
    int w1 = dconv - 1;
    const float* hold = conv + (long long)(step[1] & 1) * cd * w1;
    const float* in = zx + d_inner;
    const float* taps = cw + (long long)ch * dconv;
    float acc = cb ? cb[ch] : 0.0f;
    for (int j = 0; j <= w1; j++) {
        int s = t - w1 + j;
        float u = s >= 0 ? in[(long long)s * zx_stride + ch] : hold[(long long)ch * w1 + (w1 + s)];
        acc += taps[j] * u;
    }
    out[(long long)t * cd + ch] = silu(acc);
}

// The SSD recurrence of a batch in its chunked matrix form (the CPU's ssd::chunked, Mamba-2's
// SSD): blocks (head h, CHUNK_P of its rows), chunks of CHUNK_Q tokens in order, the state
// S (rows × n) in shared memory between chunks. With a the cumulative sum of Δ·A over the chunk
// (inclusive) and X the conv'd inputs (xbc, from ssd_conv_all; B and C rotated here when
// inv_freq is set), for t in the chunk:
//   y_t = Σ_{s<=t} (C_t·B_s) e^{a_t - a_s} Δ_s x_s + e^{a_t} C_t·S + D x_t,
//   S  <- e^{a_last} S + Σ_s e^{a_last - a_s} Δ_s x_s B_sᵀ.
// Needs d_state <= CHUNK_N.
#define CHUNK_Q 32
#define CHUNK_P 16
#define CHUNK_N 128
extern "C" __global__ void ssd_chunk_scan(const float* xbc, int cd, const float* zx,
                                          int zx_stride, const float* inv_freq,
                                          const float* dt_bias, const float* a,
                                          const float* dskip, float* ssm, float* y, int p, int n,
                                          int n_groups, int d_inner, int ntok, const int* step) {
    PDL_WAIT();
    const int NP = CHUNK_N + 1;  // padded rows: lanes reading one column of different rows
    __shared__ float Bs[CHUNK_Q * NP];
    __shared__ float Cs[CHUNK_Q * NP];
    __shared__ float S[CHUNK_P * NP];
    __shared__ float G[CHUNK_Q * (CHUNK_Q + 1)];
    __shared__ float X[CHUNK_Q * CHUNK_P];
    __shared__ float dts[CHUNK_Q], acs[CHUNK_Q], wend[CHUNK_Q];
    int h = blockIdx.x, nh = gridDim.x;
    int g = h / (nh / n_groups);
    int r0 = blockIdx.y * CHUNK_P, rp = min(CHUNK_P, p - r0);
    int tid = threadIdx.x, nt = blockDim.x;
    float ah = a[h], dtb = dt_bias[h], dh = dskip[h];
    for (int e = tid; e < rp * n; e += nt) {
        int i = e / n, k = e % n;
        S[i * NP + k] = ssm[((long long)h * p + r0 + i) * n + k];
    }
    int half = n / 2;
    for (int c0 = 0; c0 < ntok; c0 += CHUNK_Q) {
        int q = min(CHUNK_Q, ntok - c0);
        __syncthreads();  // the previous chunk's readers of Bs, Cs, X, G are done
        for (int e = tid; e < q * n; e += nt) {
            int t = e / n, k = e % n;
            const float* row = xbc + (long long)(c0 + t) * cd + d_inner;
            Bs[t * NP + k] = row[g * n + k];
            Cs[t * NP + k] = row[n_groups * n + g * n + k];
        }
        for (int e = tid; e < q * rp; e += nt) {
            int t = e / rp, i = e % rp;
            X[t * CHUNK_P + i] = xbc[(long long)(c0 + t) * cd + h * p + r0 + i];
        }
        if (tid < 32) {
            // Δ, the inclusive cumulative sum of Δ·A over the chunk (one warp scan), and each
            // token's weight in the state at the chunk's end, e^{a_last - a_s} Δ_s.
            float dt = 0.0f;
            if (tid < q) dt = softplus(zx[(long long)(c0 + tid) * zx_stride + d_inner + cd + h] + dtb);
            float v = dt * ah;
            for (int o = 1; o < 32; o <<= 1) {
                float u = __shfl_up_sync(0xffffffff, v, o);
                if (tid >= o) v += u;
            }
            float last = __shfl_sync(0xffffffff, v, q - 1);
            dts[tid] = dt;
            acs[tid] = v;
            wend[tid] = tid < q ? expf(last - v) * dt : 0.0f;
        }
        __syncthreads();
        if (inv_freq) {
            int pos0 = step[1] + c0;
            for (int e = tid; e < 2 * q * half; e += nt) {
                int which = e / (q * half), r = e % (q * half);
                int t = r / half, i = r % half;
                float* vec = (which ? Cs : Bs) + t * NP;
                float sn, cs;
                sincosf((float)(pos0 + t) * inv_freq[i], &sn, &cs);
                float x0 = vec[i], x1 = vec[i + half];
                vec[i] = x0 * cs - x1 * sn;
                vec[i + half] = x0 * sn + x1 * cs;
            }
            __syncthreads();
        }
        // G[t][s] = (C_t·B_s) e^{a_t - a_s} Δ_s for s <= t.
        for (int e = tid; e < q * q; e += nt) {
            int t = e / q, s = e % q;
            float v = 0.0f;
            if (s <= t) {
                const float* ct = Cs + t * NP;
                const float* bs = Bs + s * NP;
                for (int k = 0; k < n; k++) v += ct[k] * bs[k];
                v *= expf(acs[t] - acs[s]) * dts[s];
            }
            G[t * (CHUNK_Q + 1) + s] = v;
        }
        __syncthreads();
        // y of the chunk's tokens and the block's rows (the state before the chunk).
        for (int e = tid; e < q * rp; e += nt) {
            int t = e / rp, i = e % rp;
            float v = 0.0f;
            for (int s = 0; s <= t; s++) v += G[t * (CHUNK_Q + 1) + s] * X[s * CHUNK_P + i];
            const float* ct = Cs + t * NP;
            const float* si = S + i * NP;
            float cs = 0.0f;
            for (int k = 0; k < n; k++) cs += ct[k] * si[k];
            float xi = X[t * CHUNK_P + i];
            y[(long long)(c0 + t) * d_inner + h * p + r0 + i] = v + expf(acs[t]) * cs + dh * xi;
        }
        __syncthreads();
        // The state after the chunk.
        float last = acs[q - 1];
        for (int e = tid; e < rp * n; e += nt) {
            int i = e / n, k = e % n;
            float v = 0.0f;
            for (int s = 0; s < q; s++) v += wend[s] * X[s * CHUNK_P + i] * Bs[s * NP + k];
            S[i * NP + k] = expf(last) * S[i * NP + k] + v;
        }
    }
    __syncthreads();
    for (int e = tid; e < rp * n; e += nt) {
        int i = e / n, k = e % n;
        ssm[((long long)h * p + r0 + i) * n + k] = S[i * NP + k];
    }
}

// y = RMSNorm_groups(y ⊙ silu(z)) in place; one block per (group, token) (grid.x, grid.y).
// With q8, the result's int8 blocks too (group size a multiple of 32).
extern "C" __global__ void gate_norm(float* y, const float* zx, int zx_stride, const float* w,
                                     float eps, int d_inner, signed char* q8, float* d8) {
    PDL_WAIT();
    int gs = d_inner / gridDim.x;
    int t = blockIdx.y;
    float* yg = y + (long long)t * d_inner + blockIdx.x * gs;
    const float* z = zx + (long long)t * zx_stride + blockIdx.x * gs;
    const float* wg = w + blockIdx.x * gs;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < gs; j += blockDim.x) {
        float v = yg[j] * silu(z[j]);
        yg[j] = v;
        ss += v * v;
    }
    ss = block_sum(ss) / (float)gs;
    float inv = 1.0f / sqrtf(ss + eps);
    for (int j = threadIdx.x; j < gs; j += blockDim.x) yg[j] = wg[j] * (yg[j] * inv);
    if (!q8) return;
    __syncthreads();
    int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    long long b0 = ((long long)t * d_inner + blockIdx.x * gs) / 32;
    for (int b = threadIdx.x >> 5; b < gs / 32; b += nw) q8_block(yg[b * 32 + lane], q8, d8, b0 + b, lane);
}

// ---- CDMoE --------------------------------------------------------------------------------------

// A key whose integer order is f32::total_cmp's order (-0 below +0, NaNs at the ends), so the
// device ranks scores exactly as the CPU sorts them.
__device__ __forceinline__ int fkey(float f) {
    int b = __float_as_int(f);
    return b ^ ((b >> 31) & 0x7fffffff);
}

// Natural per-token routing of token t (grid.x) on the device (blocks/cdmoe.rs, route): the top
// m = min(k, nk) of each half of the router scores, the m² sums, the top k of those (ties:
// lower expert id), and their softmax weights. idx/wt: [t][k]. One block of at least
// max(nk, m²) threads... (looped when fewer).
extern "C" __global__ void moe_route(const float* router, int nk, int k, int* idx, float* wt) {
    PDL_WAIT();
    int t = blockIdx.x;
    const float* rx = router + (long long)t * 2 * nk;
    const float* ry = rx + nk;
    int m = k < nk ? k : nk;
    __shared__ int tx[64], ty[64];
    __shared__ float cs[4096];
    __shared__ int ce[4096];
    __shared__ float top[64];
    __shared__ int tope[64];
    for (int i = threadIdx.x; i < nk; i += blockDim.x) {
        int rankx = 0, ranky = 0;
        int kx = fkey(rx[i]), ky = fkey(ry[i]);
        for (int j = 0; j < nk; j++) {
            int jx = fkey(rx[j]), jy = fkey(ry[j]);
            if (jx > kx || (jx == kx && j < i)) rankx++;
            if (jy > ky || (jy == ky && j < i)) ranky++;
        }
        if (rankx < m) tx[rankx] = i;
        if (ranky < m) ty[ranky] = i;
    }
    __syncthreads();
    int mm = m * m;
    for (int c = threadIdx.x; c < mm; c += blockDim.x) {
        int i = tx[c / m], j = ty[c % m];
        cs[c] = rx[i] + ry[j];
        ce[c] = i * nk + j;
    }
    __syncthreads();
    for (int c = threadIdx.x; c < mm; c += blockDim.x) {
        float s = cs[c];
        int ks = fkey(s);
        int e = ce[c], rank = 0;
        for (int o = 0; o < mm; o++) {
            int ko = fkey(cs[o]);
            if (ko > ks || (ko == ks && ce[o] < e)) rank++;
        }
        if (rank < k) {
            top[rank] = s;
            tope[rank] = e;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float mx = top[0], total = 0.0f;
        for (int r = 0; r < k; r++) total += expf(top[r] - mx);
        for (int r = 0; r < k; r++) {
            idx[t * k + r] = tope[r];
            wt[t * k + r] = expf(top[r] - mx) / total;
        }
    }
}

// alpha[t][r] = silu(down_e · x[t]) · wt[t][r] for the k chosen experts (block (r, t)); expert
// e's rows are at down + e·stride and up + e·stride.
extern "C" __global__ void moe_alpha(int ty, const u8* down, long long stride, const float* x,
                                     int h, const int* idx, const float* wt, float* alpha, int k) {
    PDL_WAIT();
    int r = blockIdx.x, t = blockIdx.y;
    int e = idx[t * k + r];
    const u8* row = down + (long long)e * stride;
    const float* xt = x + (long long)t * h;
    float s = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) s += dq(ty, row, j) * xt[j];
    s = block_sum(s);
    if (threadIdx.x == 0) alpha[t * k + r] = silu(s) * wt[t * k + r];
}

// out[t] += Σ_r alpha[t][r] · up_{e_r}
extern "C" __global__ void moe_up(int ty, const u8* up, long long stride, const int* idx,
                                  const float* alpha, float* out, int h, int k) {
    PDL_WAIT();
    int t = blockIdx.y;
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= h) return;
    float acc = 0.0f;
    for (int r = 0; r < k; r++) {
        const u8* row = up + (long long)idx[t * k + r] * stride;
        acc += alpha[t * k + r] * dq(ty, row, j);
    }
    out[(long long)t * h + j] += acc;
}

// ---- persistent decode of SSD models ------------------------------------------------------------

// One decode step of a model whose layers are all SSD mixers without a feed-forward block
// (Mamba-2) in one launch: every block of the grid (all resident at once: a cooperative launch)
// takes its share of each stage and waits at a grid barrier before the next. Per layer three
// stages: [RMSNorm of the residual, recomputed by every block, then the rows of in_proj], [the
// SSD step of (head, part) items, ssd_item], [the gated RMSNorm of y, recomputed by every block,
// then the rows of out_proj added to the residual]; then the output norm and head. The products
// are one warp per row, the activations in shared memory (int8 blocks for quantized weights),
// with the same per-element arithmetic as the separate kernels. Data written by other blocks of
// the launch is read past L1 (ld.cg).

// Every field is 8 bytes (the host writes u64 words; int and float fields in the low 4 bytes).
struct SsdLayerArgs {
    const float* norm;
    const float* res_scale;  // NULL: x += branch
    const u8* in_w;
    long long in_rb, in_ty;
    const float* in_b;
    const u8* out_w;
    long long out_rb, out_ty;
    const float* out_b;
    const float* conv_w;
    const float* conv_b;
    const float* inv_freq;
    const float* dt_bias;
    const float* a;
    const float* dskip;
    const float* gnorm;
    float* conv;
    float* ssm;
};

struct SsdDecodeArgs {
    const SsdLayerArgs* layers;
    long long n_layers, d_model, d_inner, n_heads, head_dim, d_state, n_groups, d_conv, in_rows;
    float eps; int pad0;
    float gnorm_eps; int pad1;
    long long emb_ty;
    const u8* emb_w;
    long long emb_rb;
    long long out_ty;
    const u8* out_w;
    long long out_rb, vocab;
    const float* out_norm;
    const int* step;
    float* x;
    float* zx;
    float* y;
    float* logits;
    unsigned* bar;
    long long parts;
    unsigned long long* times;  // NULL, or profiling (see grid_sync)
    // Bit 0: the coming weights and SSD states into L2 (prefetch_rows, _state); bit 1: the
    // coming stage's small vectors too (prefetch_vec); bit 2: issued after the block's arrival
    // at the barrier instead of before it (ssd_decode's SYNC_AFTER); bit 3: no barrier after the
    // embedding (layer 0's norm reads the row itself).
    long long prefetch;
};

// The grid's warps in the products' order: warp w of block b is number w·gridDim.x + b, so
// consecutive rows go to different blocks and every block gets the same share of a product's
// rows (numbered b·warps + w, a block took 16 consecutive rows: out_proj's 768 rows went to 48
// of 132 blocks, and in_proj's 3352 gave 78 blocks 32 rows and the others 16).
__device__ __forceinline__ int grid_warp() {
    return (threadIdx.x >> 5) * gridDim.x + blockIdx.x;
}

// This warp's rows of W (as grid_rows assigns them) into L2, one 128-byte line per lane: issued
// a stage or two before the rows are read, so their DRAM latency overlaps other work.
__device__ __forceinline__ void prefetch_rows(const u8* w, long long rb, int rows) {
    int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    int gw = grid_warp(), tw = gridDim.x * nw;
    for (int r = gw; r < rows; r += tw) {
        const u8* row = w + (long long)r * rb;
        for (long long o = lane * 128; o < rb; o += 32 * 128)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(row + o));
    }
}



// The state rows of this block's SSD items (h, part) of ssd_decode's loop, contiguous per item,
// into L2: issued at the end of the in_proj stage, so the SSD step's first loads hit L2.
__device__ __forceinline__ void prefetch_state(const float* ssm, int nh, int parts, int p, int n) {
    for (int it = blockIdx.x; it < nh * parts; it += gridDim.x) {
        int h = it / parts, part = it % parts, r0, r1;
        item_rows(part, parts, p, &r0, &r1);
        const char* s = (const char*)(ssm + ((long long)h * p + r0) * n);
        long long bytes = (long long)max(r1 - r0, 0) * n * 4;
        for (long long o = threadIdx.x * 128LL; o < bytes; o += blockDim.x * 128LL)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(s + o));
    }
}

// n floats at v into L2, shared by the grid: line i by block i mod gridDim.x (so no two blocks
// ask for one line). For a stage's small vectors (norm weights, conv taps, history and bias,
// the heads' scalars), which 300 MB of weights per token have pushed out of L2 since the token
// before: every block reads them, and a miss costs its first round trip a trip to DRAM.
__device__ __forceinline__ void prefetch_vec(const float* v, long long n) {
    if (!v) return;
    long long lines = (n * 4 + 127) / 128;
    for (long long i = blockIdx.x + (long long)threadIdx.x * gridDim.x; i < lines;
         i += (long long)blockDim.x * gridDim.x)
        asm volatile("prefetch.global.L2 [%0];" ::"l"((const char*)v + i * 128));
}

// grid_sync in two halves, so a block can issue work the others do not wait for (its
// prefetches) between its arrival and its wait: grid_arrive, then grid_wait.
__device__ __forceinline__ void grid_arrive(unsigned* bar, unsigned* target,
                                           unsigned long long* times) {
    __syncthreads();
    *target += gridDim.x;
    if (threadIdx.x == 0) {
#ifdef FUSED_PHASES
        if (times) ph_rec[2] = gtime();
#else
        if (times && blockIdx.x == 0) times[2 * (*target / gridDim.x - 1)] = gtime();
#endif
        // Release: the block's writes (ordered before by __syncthreads) are visible to every
        // block whose acquiring load sees the count.
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(bar) : "memory");
    }
}

__device__ __forceinline__ void grid_wait(unsigned* bar, unsigned target,
                                         unsigned long long* times) {
    if (threadIdx.x == 0) {
        unsigned spins = 0;
        for (;;) {
            unsigned v;
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(bar) : "memory");
            if (v >= target) break;
            if (++spins > (1u << 26)) asm volatile("trap;");
        }
        int k = target / gridDim.x - 1;
#ifdef FUSED_PHASES
        if (times) {
            ph_rec[3] = gtime();
            ph_rec = times + 8 * ((long long)(k + 1) * gridDim.x + blockIdx.x);
        }
#else
        if (times && blockIdx.x == 0) times[2 * k + 1] = gtime();
#endif
    }
    __syncthreads();
}

// Grid barrier: the count rises by gridDim.x per barrier (reset to 0 before the launch).
// Traps rather than hangs if a block never arrives (a grid that is not all resident). With
// `times` (profiling), block 0 records when it arrives and when it leaves, barrier k at
// times[2k], times[2k+1] (ns of the global timer); compiled with FUSED_PHASES, every block
// records its stages instead, at times[8(k·gridDim.x + block) + j] (see phase_mark).
__device__ __forceinline__ void grid_sync(unsigned* bar, unsigned* target,
                                          unsigned long long* times) {
    grid_arrive(bar, target, times);
    grid_wait(bar, *target, times);
}

__device__ __forceinline__ bool is_quant(int ty) { return ty != T_F32 && ty != T_F16 && ty != T_BF16; }

// Lane `lane`'s shares of two rows' products with the activation: w0·x into a0, w1·x into a1
// (x in shared memory; for a quantized T, its int8 blocks q and scales ds). RD_K of a lane's
// words (16 bytes of a float row, a quarter block of a quantized one) per row are loaded before
// the first is used, at addresses clamped into the row instead of guarded, so no branch
// separates the loads and a batch costs one memory round trip. (A guarded loop issues one load
// per round trip once fewer than its unroll count are left: a 768-wide F16 row is 3 words per
// lane, which took 3 round trips per row, and the second row waited for the first.)
template <int T>
__device__ __forceinline__ void rowdot2(const u8* w0, const u8* w1, const float* x,
                                        const signed char* q, const float* ds, int cols, int lane,
                                        float* a0, float* a1) {
    float s0 = 0.0f, s1 = 0.0f;
    if (T == T_F32 && (cols & 3) == 0) {
        int nv = cols / 4;
        for (int base = lane; base < nv; base += 32 * RD_K) {
            float4 v0[RD_K], v1[RD_K];
#pragma unroll
            for (int k = 0; k < RD_K; k++) {
                int i = min(base + 32 * k, nv - 1);
                v0[k] = ((const float4*)w0)[i];
                v1[k] = ((const float4*)w1)[i];
            }
#pragma unroll
            for (int k = 0; k < RD_K; k++) {
                int i = base + 32 * k;
                if (i < nv) {
                    float4 a = ((const float4*)x)[i];
                    s0 += v0[k].x * a.x + v0[k].y * a.y + v0[k].z * a.z + v0[k].w * a.w;
                    s1 += v1[k].x * a.x + v1[k].y * a.y + v1[k].z * a.z + v1[k].w * a.w;
                }
            }
        }
    } else if ((T == T_F16 || T == T_BF16) && (cols & 7) == 0) {
        int nv = cols / 8;
        for (int base = lane; base < nv; base += 32 * RD_K) {
            uint4 v0[RD_K], v1[RD_K];
#pragma unroll
            for (int k = 0; k < RD_K; k++) {
                int i = min(base + 32 * k, nv - 1);
                v0[k] = ((const uint4*)w0)[i];
                v1[k] = ((const uint4*)w1)[i];
            }
#pragma unroll
            for (int k = 0; k < RD_K; k++) {
                int i = base + 32 * k;
                if (i < nv) {
                    const float4* xa = (const float4*)x + 2 * i;
                    float4 a = xa[0], b = xa[1];
                    float f[8];
                    unpack8<T>(v0[k], f);
                    s0 += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * b.x +
                          f[5] * b.y + f[6] * b.z + f[7] * b.w;
                    unpack8<T>(v1[k], f);
                    s1 += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * b.x +
                          f[5] * b.y + f[6] * b.z + f[7] * b.w;
                }
            }
        }
    } else if (T != T_F32 && T != T_F16 && T != T_BF16) {
        int nit = cols / 32 * 4;
        for (int base = lane; base < nit; base += 32 * RD_K) {
            float p0[RD_K], p1[RD_K];
#pragma unroll
            for (int k = 0; k < RD_K; k++) {
                int it = min(base + 32 * k, nit - 1);
                int b = it >> 2, sub = it & 3;
                const int* aq = (const int*)(q + b * 32);
                p0[k] = vdot<T>(w0, b, sub, aq, ds[2 * b], ds[2 * b + 1]);
                p1[k] = vdot<T>(w1, b, sub, aq, ds[2 * b], ds[2 * b + 1]);
            }
#pragma unroll
            for (int k = 0; k < RD_K; k++) {
                if (base + 32 * k < nit) {
                    s0 += p0[k];
                    s1 += p1[k];
                }
            }
        }
    } else {
        // Widths that are not whole 16-byte words: one value at a time.
        for (int i = lane; i < cols; i += 32) {
            float v0 = T == T_F32 ? ((const float*)w0)[i]
                     : T == T_F16 ? h2f(((const u16*)w0)[i]) : bf2f(((const u16*)w0)[i]);
            float v1 = T == T_F32 ? ((const float*)w1)[i]
                     : T == T_F16 ? h2f(((const u16*)w1)[i]) : bf2f(((const u16*)w1)[i]);
            s0 += v0 * x[i];
            s1 += v1 * x[i];
        }
    }
    *a0 = s0;
    *a1 = s1;
}

// The activation xs[0..cols) (shared) to int8 blocks in shared q/ds when ty is quantized.
__device__ __forceinline__ void smem_quantize(int ty, const float* xs, int cols, signed char* q,
                                              float* ds) {
    if (!is_quant(ty)) return;
    __syncthreads();
    int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    for (int b = threadIdx.x >> 5; b < cols / 32; b += nw) q8_block(xs[b * 32 + lane], q, ds, b, lane);
}

// old: resid[r], loaded before the row's product.
__device__ __forceinline__ void put_row(int r, float acc, const float* bias, float* out,
                                        float* resid, const float* scale, float old) {
    float v = acc + (bias ? bias[r] : 0.0f);
    if (resid) {
        resid[r] = (scale ? scale[r] * old : old) + v;
    } else {
        out[r] = v;
    }
}

// An RMSNorm folded into the product after it (see fold_norm): the warps' shares of Σx² in
// red[0..warps), the norm's width and ε. red NULL: none.
struct Fold {
    const float* red;
    float n, eps;
};

// Rows of W (one warp each, strided over every warp of the grid, two rows in flight per warp)
// times the activation in shared memory: out[r] = W[r]·x + bias[r], or with resid,
// resid[r] = (scale ⊙ resid)[r] + W[r]·x + bias[r]. With a fold, x is the norm's input times
// its weight and each product is scaled by the norm's 1/rms before the bias.
template <int T>
__device__ void grid_rows_t(const u8* w, long long rb, int rows, int cols, const float* xs,
                            const signed char* q, const float* ds, const float* bias, float* out,
                            float* resid, const float* scale, Fold fold) {
    int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    int gw = grid_warp(), tw = gridDim.x * nw;
    float inv = 1.0f;
    if (fold.red) {
        // The sum in block_sum's order, so 1/rms is the one smem_rmsnorm computes.
        float ss = warp_sum(lane < nw ? fold.red[lane] : 0.0f) / fold.n;
        inv = 1.0f / sqrtf(ss + fold.eps);
    }
    for (int r = gw; r < rows; r += 2 * tw) {
        int r2 = r + tw;
        // The residual's old values are loaded first: their latency overlaps the products'.
        float o0 = 0.0f, o1 = 0.0f;
        if (resid && lane == 0) {
            o0 = __ldcg(resid + r);
            if (r2 < rows) o1 = __ldcg(resid + r2);
        }
        if (r == gw) phase_mark(5, false);
        // Without a second row, the first is read twice (from cache) and a1 is not used.
        const u8* w0 = w + (long long)r * rb;
        const u8* w1 = w + (long long)(r2 < rows ? r2 : r) * rb;
#ifdef SKELETON
        // Measurements only, wrong results: the products read the activation in shared memory
        // instead of the weights, so a step runs every stage without the weights' bytes.
        w0 = w1 = (const u8*)xs;
#endif
        float a0, a1;
        rowdot2<T>(w0, w1, xs, q, ds, cols, lane, &a0, &a1);
        a0 = warp_sum(a0) * inv;
        a1 = warp_sum(a1) * inv;
        if (r == gw) phase_mark(6, false);
        if (lane == 0) {
            put_row(r, a0, bias, out, resid, scale, o0);
            if (r2 < rows) put_row(r2, a1, bias, out, resid, scale, o1);
        }
        if (r == gw) phase_mark(7, false);
    }
}

__device__ void grid_rows(int ty, const u8* w, long long rb, int rows, int cols, const float* xs,
                          const signed char* q, const float* ds, const float* bias, float* out,
                          float* resid, const float* scale, Fold fold = Fold{0, 0.0f, 0.0f}) {
    __syncthreads();
#define GR(T) grid_rows_t<T>(w, rb, rows, cols, xs, q, ds, bias, out, resid, scale, fold)
    switch (ty) {
    case T_F32: GR(T_F32); break;
    case T_F16: GR(T_F16); break;
    case T_BF16: GR(T_BF16); break;
    case T_Q4_0: GR(T_Q4_0); break;
    case T_Q4_1: GR(T_Q4_1); break;
    case T_Q5_0: GR(T_Q5_0); break;
    case T_Q5_1: GR(T_Q5_1); break;
    case T_Q8_0: GR(T_Q8_0); break;
    case T_Q4_K: GR(T_Q4_K); break;
    case T_Q5_K: GR(T_Q5_K); break;
    case T_Q6_K: GR(T_Q6_K); break;
    }
#undef GR
}

// Whether the RMSNorm in front of a product of type ty is folded into it: for float weights,
// the activation stays x ⊙ w and the product is scaled by 1/rms (grid_rows_t), so the block
// does not wait for its reduction of Σx² (three __syncthreads) and a pass over x before the
// products; the only barrier left is the one that publishes x ⊙ w. Int8 activations are
// quantized from the normalized values, as on the CPU, so quantized products keep the norm.
__device__ __forceinline__ bool fold_norm(int ty) {
#ifdef NO_FOLD
    return false;  // measurements: the norms as before the fold
#else
    return !is_quant(ty);
#endif
}

// Element j of a norm's input v and its weight w into shared memory: folded, xs = w·v; else v in
// xs and w in ws, for the pass that normalizes them.
__device__ __forceinline__ void norm_put(int j, float v, float w, bool fold, float* xs, float* ws) {
    if (fold) {
        xs[j] = w * v;
    } else {
        ws[j] = w;
        xs[j] = v;
    }
}

// A folded norm's end: the warp's share of Σx² into red[warp] (grid_rows_t sums them).
__device__ __forceinline__ void fold_share(float ss, float* red) {
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
}

// xs = RMSNorm(x) ⊙ w (x read past L1; w staged in ws with x, one round trip), and its int8
// blocks for a quantized product. When fold_norm(ty): xs = x ⊙ w and the warps' shares of Σx²
// in red (see Fold). With IN_XS, the input is already in xs (each thread reads the elements it
// then writes) instead of x.
template <bool IN_XS = false>
__device__ void smem_rmsnorm(const float* x, const float* w, float eps, int d, int ty, float* xs,
                             float* ws, signed char* q, float* ds, float* red) {
    bool fold = fold_norm(ty);
    float ss = 0.0f;
    for (int j0 = threadIdx.x; j0 < d; j0 += 4 * blockDim.x) {
        // Four per thread loaded at once, one round trip; lanes past d load nothing. (Clamped to
        // the last element instead, as rowdot2 does within a row, the spare lanes of every block
        // asked one L2 line for the same word: 32 requests per block, 4,224 per stage, which
        // that line's slice answers one by one.)
        float v[4], wv[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            int j = j0 + k * (int)blockDim.x;
            v[k] = j >= d ? 0.0f : IN_XS ? xs[j] : __ldcg(x + j);
            wv[k] = j < d ? w[j] : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < 4; k++) {
            int j = j0 + k * (int)blockDim.x;
            if (j < d) {
                norm_put(j, v[k], wv[k], fold, xs, ws);
                ss += v[k] * v[k];
            }
        }
    }
    phase_mark(4, false);
    if (fold) {
        fold_share(ss, red);
        return;
    }
    ss = block_sum(ss) / (float)d;
    float inv = 1.0f / sqrtf(ss + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) xs[j] = ws[j] * (xs[j] * inv);
    smem_quantize(ty, xs, d, q, ds);
}

extern "C" __global__ void __launch_bounds__(512) ssd_decode(const SsdDecodeArgs* __restrict__ pa) {
    extern __shared__ float smem[];
    const SsdDecodeArgs A = *pa;
    int d = (int)A.d_model, di = (int)A.d_inner;
    int widest = d > di ? d : di;
    // Shared: activation, norm weights, int8 blocks and scales, every layer's arguments.
    float* xs = smem;
    float* ws = smem + widest;
    signed char* q = (signed char*)(smem + 2 * widest);
    float* ds = (float*)(q + ((widest + 15) & ~15));
    SsdLayerArgs* layers = (SsdLayerArgs*)(ds + 2 * (widest / 32 + 1));
    {
        const long long* from = (const long long*)A.layers;
        long long* to = (long long*)layers;
        int words = (int)A.n_layers * (int)(sizeof(SsdLayerArgs) / 8);
        for (int i = threadIdx.x; i < words; i += blockDim.x) to[i] = from[i];
    }
    // The warps' shares of Σx² of a norm folded into its product (Fold).
    __shared__ float red[32];
    unsigned target = 0;
#ifdef FUSED_PHASES
    if (threadIdx.x == 0) ph_rec = A.times ? A.times + 8 * blockIdx.x : 0;
#endif
    // The token's embedding row into the residual. With bit 3 of A.prefetch (the default; not
    // when profiling, whose marks count the embedding as stage 0), no barrier follows: layer
    // 0's norm reads the row itself, and the residual's first reader (layer 0's out_proj) is
    // two barriers later.
    const u8* erow = A.emb_w + (long long)A.step[0] * A.emb_rb;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < d; j += gridDim.x * blockDim.x)
        A.x[j] = dq((int)A.emb_ty, erow, j);
    bool emb_direct = (A.prefetch & 8) && !A.times;
    if (emb_direct) {
        // Every block its own copy, in xs where layer 0's norm reads it (same thread, same j).
        for (int j = threadIdx.x; j < d; j += blockDim.x) xs[j] = dq((int)A.emb_ty, erow, j);
        // The layers' arguments in shared memory, copied by every thread above, before any
        // thread reads them (grid_sync's __syncthreads orders them otherwise).
        __syncthreads();
    } else {
        grid_sync(A.bar, &target, A.times);
    }
    int p = (int)A.head_dim, n = (int)A.d_state, ng = (int)A.n_groups, nh = (int)A.n_heads;
    int parts = (int)A.parts, rows = (int)A.in_rows;
    // A layer's small vectors, a stage or more before they are read: the norm's weights, the
    // SSD step's taps, bias, this position's history and the heads' scalars, the gated norm's
    // weights.
    bool pv = A.prefetch & 2;
    int cd = di + 2 * ng * n, w1 = (int)A.d_conv - 1;
#define PREFETCH_VECS(LA)                                                                      \
    do {                                                                                       \
        prefetch_vec((LA).norm, d);                                                            \
        prefetch_vec((LA).conv_w, (long long)cd * A.d_conv);                                   \
        prefetch_vec((LA).conv_b, cd);                                                         \
        prefetch_vec((LA).conv + (long long)(A.step[1] & 1) * cd * w1, (long long)cd * w1);    \
        prefetch_vec((LA).dt_bias, nh);                                                        \
        prefetch_vec((LA).a, nh);                                                              \
        prefetch_vec((LA).dskip, nh);                                                          \
        prefetch_vec((LA).gnorm, di);                                                          \
    } while (0)
    if (A.prefetch & 1) prefetch_rows(A.layers[0].in_w, A.layers[0].in_rb, rows);
    if (pv) PREFETCH_VECS(A.layers[0]);
    // A stage's end: its prefetches (PF) and the grid barrier. With bit 2 of A.prefetch (the
    // default), the prefetches are issued after the block's arrival: issued before it, they
    // stood between the stage's last stores and the arrival (F16 327 against 311 us a step).
    bool late = A.prefetch & 4;
#define SYNC_AFTER(PF)                                                                         \
    do {                                                                                       \
        if (!late) {                                                                           \
            PF;                                                                                \
        }                                                                                      \
        grid_arrive(A.bar, &target, A.times);                                                  \
        if (late) {                                                                            \
            PF;                                                                                \
        }                                                                                      \
        grid_wait(A.bar, target, A.times);                                                     \
    } while (0)
    for (int l = 0; l < (int)A.n_layers; l++) {
        const SsdLayerArgs& L = layers[l];
        if (l == 0 && emb_direct)
            smem_rmsnorm<true>(A.x, L.norm, A.eps, d, (int)L.in_ty, xs, ws, q, ds, red);
        else
            smem_rmsnorm(A.x, L.norm, A.eps, d, (int)L.in_ty, xs, ws, q, ds, red);
        phase_mark(0);
        grid_rows((int)L.in_ty, L.in_w, L.in_rb, rows, d, xs, q, ds, L.in_b, A.zx, 0, 0,
                  fold_norm((int)L.in_ty) ? Fold{red, (float)d, A.eps} : Fold{0, 0.0f, 0.0f});
        phase_mark(1);
        // Each prefetch is issued at the end of the stage before its reader, while the barrier
        // waits: issued at the start of the SSD step, 7.5 MB of product rows queued in front of
        // the step's own reads and slowed it from 3.9 to 5.3 us.
        SYNC_AFTER(if (A.prefetch & 1) prefetch_state(L.ssm, nh, parts, p, n));
        for (int it = blockIdx.x; it < nh * parts; it += gridDim.x) {
            ssd_item(it / parts, nh, it % parts, parts, A.zx, rows, L.conv, L.conv_w, L.conv_b,
                     L.inv_freq, L.dt_bias, L.a, L.dskip, L.ssm, A.y, p, n, ng, di,
                     (int)A.d_conv, 0, A.step);
            __syncthreads();
        }
        phase_mark(1);
        SYNC_AFTER(if (A.prefetch & 1) prefetch_rows(L.out_w, L.out_rb, d));
        // Gated RMSNorm per group of y ⊙ silu(z) (as gate_norm), then out_proj into x; with
        // one group and float weights, folded into out_proj (see fold_norm).
        int gs = di / ng;
        bool fold = ng == 1 && fold_norm((int)L.out_ty);
        for (int g = 0; g < ng; g++) {
            float ss = 0.0f;
            int g1 = (g + 1) * gs;
            for (int j0 = g * gs + threadIdx.x; j0 < g1; j0 += 4 * blockDim.x) {
                // Four per thread loaded at once; lanes past the group load nothing (see
                // smem_rmsnorm).
                float yv[4], zv[4], wv[4];
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    int j = j0 + k * (int)blockDim.x;
                    bool in = j < g1;
                    yv[k] = in ? __ldcg(A.y + j) : 0.0f;
                    zv[k] = in ? __ldcg(A.zx + j) : 0.0f;
                    wv[k] = in ? L.gnorm[j] : 0.0f;
                }
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    int j = j0 + k * (int)blockDim.x;
                    if (j < g1) {
                        float v = yv[k] * silu(zv[k]);
                        norm_put(j, v, wv[k], fold, xs, ws);
                        ss += v * v;
                    }
                }
            }
            phase_mark(4, false);
            if (fold) {
                fold_share(ss, red);
                break;
            }
            ss = block_sum(ss) / (float)gs;
            float inv = 1.0f / sqrtf(ss + A.gnorm_eps);
            for (int j = g * gs + threadIdx.x; j < (g + 1) * gs; j += blockDim.x)
                xs[j] = ws[j] * (xs[j] * inv);
        }
        if (!fold) smem_quantize((int)L.out_ty, xs, di, q, ds);
        phase_mark(0);
        grid_rows((int)L.out_ty, L.out_w, L.out_rb, d, di, xs, q, ds, L.out_b, 0, A.x,
                  L.res_scale, fold ? Fold{red, (float)gs, A.gnorm_eps} : Fold{0, 0.0f, 0.0f});
        phase_mark(1);
        SYNC_AFTER({
            if ((A.prefetch & 1) && l + 1 < (int)A.n_layers)
                prefetch_rows(layers[l + 1].in_w, layers[l + 1].in_rb, rows);
            if (pv && l + 1 < (int)A.n_layers) PREFETCH_VECS(layers[l + 1]);
            if (pv && l + 1 == (int)A.n_layers) prefetch_vec(A.out_norm, d);
        });
    }
    smem_rmsnorm(A.x, A.out_norm, A.eps, d, (int)A.out_ty, xs, ws, q, ds, red);
    phase_mark(0);
    grid_rows((int)A.out_ty, A.out_w, A.out_rb, (int)A.vocab, d, xs, q, ds, 0, A.logits, 0, 0,
              fold_norm((int)A.out_ty) ? Fold{red, (float)d, A.eps} : Fold{0, 0.0f, 0.0f});
    phase_mark(1);
    if (A.times) grid_sync(A.bar, &target, A.times);
}
#undef PREFETCH_VECS
#undef SYNC_AFTER
