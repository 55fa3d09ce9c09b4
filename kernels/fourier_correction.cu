// fourier_correction.cu: the spectral part of the residual-form Fourier data step, docs/algorithm.md §6.2-6.3
// (reference: engine/operators.py FourierDataStep.correction).
//
//   C = conj(otf) . tile( (Y - fold(otf . X)) / (fold(|otf|^2) + rho) )
//
// X = FFT(x0_01), (B, C, H, W); otf (Bk, 1, H, W); Y = FFT(y), (B, C, h, w) with h = H/sf,
// w = W/sf; fold(|otf|^2) precomputed, (Bk, 1, h, w); C (B, C, H, W). fold (⇓) averages the
// sf x sf tiles of size h x w (tile (a, b) = rows a h.., cols b w..); tile (⇑) repeats.
// Deblurring is sf = 1 (fold and tile are identities, the kernel is elementwise), SR sf = 2..4.
//
// One thread per low-resolution frequency (b, c, u, v): it reads its sf^2 entries of X and otf
// once (kept in registers, fully unrolled), and writes its sf^2 entries of C once, so C may
// alias X (so neither is __restrict__). Complex64 is float2 (re, im); complex products in torch's (c10::complex) form.
// otf_batch_stride / abs2_batch_stride are 0 when one kernel serves the whole batch (Bk = 1).
// Entry points: fourier_correction_sf1, _sf2, _sf3, _sf4 (extern "C").

__device__ __forceinline__ float2 cmul(float2 a, float2 b) {
    return make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

__device__ __forceinline__ float2 conj_mul(float2 a, float2 b) {  // conj(a) * b
    return cmul(make_float2(a.x, -a.y), b);
}

template <int SF>
__device__ __forceinline__ void correction(const float2* x0_spectrum, const float2* __restrict__ otf,
                                           const float* __restrict__ otf_abs2_folded,
                                           const float2* __restrict__ y_spectrum, float2* out, long long n_low,
                                           long long channels, long long h, long long w,
                                           long long otf_batch_stride, long long abs2_batch_stride, float rho) {
    const long long W = w * SF;
    const long long plane = h * SF * W;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n_low;
         i += (long long)gridDim.x * blockDim.x) {
        const long long v = i % w;
        const long long u = (i / w) % h;
        const long long bc = i / (h * w);  // b * channels + c
        const long long b = bc / channels;
        const float2* x_plane = x0_spectrum + bc * plane;
        const float2* otf_plane = otf + b * otf_batch_stride;
        float2* out_plane = out + bc * plane;

        float2 o[SF * SF];
        float2 sum = make_float2(0.0f, 0.0f);
#pragma unroll
        for (int a = 0; a < SF; ++a) {
#pragma unroll
            for (int bb = 0; bb < SF; ++bb) {
                const long long pos = (u + a * h) * W + (v + bb * w);
                o[a * SF + bb] = otf_plane[pos];
                const float2 p = cmul(o[a * SF + bb], x_plane[pos]);
                sum.x += p.x;
                sum.y += p.y;
            }
        }
        const float2 folded = SF == 1 ? sum : make_float2(sum.x / (SF * SF), sum.y / (SF * SF));
        const float2 y = y_spectrum[i];
        const float denominator = otf_abs2_folded[b * abs2_batch_stride + u * w + v] + rho;
        const float2 r = make_float2((y.x - folded.x) / denominator, (y.y - folded.y) / denominator);
#pragma unroll
        for (int a = 0; a < SF; ++a) {
#pragma unroll
            for (int bb = 0; bb < SF; ++bb) {
                out_plane[(u + a * h) * W + (v + bb * w)] = conj_mul(o[a * SF + bb], r);
            }
        }
    }
}

#define FOURIER_CORRECTION(SF)                                                                              \
    extern "C" __global__ void fourier_correction_sf##SF(                                                  \
        const float2* x0_spectrum, const float2* __restrict__ otf,                                         \
        const float* __restrict__ otf_abs2_folded, const float2* __restrict__ y_spectrum, float2* out,      \
        long long n_low, long long channels, long long h, long long w, long long otf_batch_stride,          \
        long long abs2_batch_stride, float rho) {                                                          \
        correction<SF>(x0_spectrum, otf, otf_abs2_folded, y_spectrum, out, n_low, channels, h, w,          \
                       otf_batch_stride, abs2_batch_stride, rho);                                          \
    }

FOURIER_CORRECTION(1)
FOURIER_CORRECTION(2)
FOURIER_CORRECTION(3)
FOURIER_CORRECTION(4)
