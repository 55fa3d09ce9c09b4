// diffpir_step.cu: the fused DiffPIR step, docs/algorithm.md §3-4 with the data steps of §6
// (reference: engine/step.py diffpir_update = predict_x0 -> data step -> renoise).
//
//   x0      = clamp(sqrt(1/a_t) x_t - sqrt(1/a_t - 1) eps, -1, 1)                  docs/algorithm.md §3
//   x0_01   = x0 / 2 + 1/2                                  ([-1,1] -> [0,1], docs/algorithm.md §1)
//   data step on [0, 1] images, one of:
//     mask        x0_01 = x0_01 + m (y - x0_01) / (m + rho)           docs/algorithm.md §6.1 (inpaint, denoise)
//     correction  x0_01 = x0_01 + Re(IFFT(C))   C from fourier_correction.cu, docs/algorithm.md §6.2-6.3
//   x0      = 2 x0_01 - 1
//   eps_hat = (x_t - sqrt(a_t) x0) * (1 / sqrt(1 - a_t))                                  docs/algorithm.md §4 2b
//   x_t'    = sqrt(a_t') x0 + sqrt(1 - a_t') (sqrt(1 - zeta) eps_hat + sqrt(zeta) z)  docs/algorithm.md §4 2c
//
// Entry points (extern "C", unmangled for cupy.RawModule.get_function):
//   diffpir_predict_x0_01         x0_01 only: the FFT's input in the Fourier path
//   diffpir_step_mask_v1/_v4      the whole step with the mask prox folded in
//   diffpir_step_correction_v1/_v4  the whole step adding the inverse FFT's real part
// _v4 variants move 16 bytes per access; the wrapper (diffpir_step.py) picks them when
// n and H*W are multiples of 4 and every pointer is 16-byte aligned.
//
// All tensors fp32 (the correction interleaved complex64), contiguous, (B, C, H, W);
// the mask (Bm, Cm, H, W) is indexed b * mask_batch_stride + c * mask_channel_stride +
// p * mask_pixel_stride for pixel p of channel c of image b (strides 0 broadcast). Built with -fmad=false and written in torch's operation order,
// so every operation rounds as torch's eager kernels do. NaN propagates (no fminf clamp).

struct Coefficients {
    float sqrt_recip_a, sqrt_recipm1_a, sqrt_a, inv_sqrt_1m_a, sqrt_a_next, sqrt_1m_a_next;
    float w_eps;  // sqrt(1 - zeta)
    float w_z;    // sqrt(zeta)
};

__device__ __forceinline__ float clamp_unit(float v) {
    return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);  // torch.clamp: NaN stays NaN
}

__device__ __forceinline__ float predict_x0_01(float x, float eps, const Coefficients& c) {
    const float x0 = clamp_unit(c.sqrt_recip_a * x - c.sqrt_recipm1_a * eps);
    return x0 / 2.0f + 0.5f;
}

__device__ __forceinline__ float renoise_01(float x, float x0_01, float z, const Coefficients& c) {
    const float x0 = 2.0f * x0_01 - 1.0f;
    // torch on CUDA divides by a scalar as a multiply by its fp32 reciprocal; so does this.
    const float eps_hat = (x - c.sqrt_a * x0) * c.inv_sqrt_1m_a;
    const float mixed = c.w_eps * eps_hat + c.w_z * z;
    return c.sqrt_a_next * x0 + c.sqrt_1m_a_next * mixed;
}

__device__ __forceinline__ float step_mask(float x, float eps, float z, float m, float y, float rho,
                                           const Coefficients& c) {
    float x0_01 = predict_x0_01(x, eps, c);
    x0_01 = x0_01 + m * (y - x0_01) / (m + rho);
    return renoise_01(x, x0_01, z, c);
}

__device__ __forceinline__ float step_correction(float x, float eps, float z, float correction,
                                                 const Coefficients& c) {
    return renoise_01(x, predict_x0_01(x, eps, c) + correction, z, c);
}

#define GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

#define COEFFICIENT_PARAMS                                                                    \
    float sqrt_recip_a, float sqrt_recipm1_a, float sqrt_a, float inv_sqrt_1m_a, float sqrt_a_next, \
        float sqrt_1m_a_next, float w_eps, float w_z
#define COEFFICIENTS \
    Coefficients { sqrt_recip_a, sqrt_recipm1_a, sqrt_a, inv_sqrt_1m_a, sqrt_a_next, sqrt_1m_a_next, w_eps, w_z }

extern "C" __global__ void diffpir_predict_x0_01(const float* __restrict__ x_t, const float* __restrict__ eps,
                                                 float* __restrict__ x0_01, long long n, float sqrt_recip_a,
                                                 float sqrt_recipm1_a) {
    const Coefficients c{sqrt_recip_a, sqrt_recipm1_a, 0.f, 1.f, 0.f, 0.f, 0.f, 0.f};
    GRID_STRIDE(i, n) { x0_01[i] = predict_x0_01(x_t[i], eps[i], c); }
}

// ---------------------------------------------------------------- mask prox folded in

#define MASK_PARAMS                                                                          \
    long long n, long long hw, long long channels, long long mask_batch_stride,               \
        long long mask_channel_stride, long long mask_pixel_stride, float rho

// The mask index of element i of a contiguous (B, C, H, W) tensor.
__device__ __forceinline__ long long mask_index(long long i, long long hw, long long channels, long long sb,
                                                long long sc, long long sp) {
    const long long plane = i / hw;  // b * channels + c
    return (plane / channels) * sb + (plane % channels) * sc + (i % hw) * sp;
}

extern "C" __global__ void diffpir_step_mask_v1(const float* __restrict__ x_t, const float* __restrict__ eps,
                                                const float* __restrict__ z, const float* __restrict__ mask,
                                                const float* __restrict__ y, float* __restrict__ out, MASK_PARAMS,
                                                COEFFICIENT_PARAMS) {
    const Coefficients c = COEFFICIENTS;
    GRID_STRIDE(i, n) {
        const float m = mask[mask_index(i, hw, channels, mask_batch_stride, mask_channel_stride, mask_pixel_stride)];
        out[i] = step_mask(x_t[i], eps[i], z[i], m, y[i], rho, c);
    }
}

// Four consecutive elements per thread; hw % 4 == 0 keeps them in one (b, c) plane, so the
// mask is one float4 (pixel stride 1) or one broadcast value (pixel stride 0).
extern "C" __global__ void diffpir_step_mask_v4(const float* __restrict__ x_t, const float* __restrict__ eps,
                                                const float* __restrict__ z, const float* __restrict__ mask,
                                                const float* __restrict__ y, float* __restrict__ out, MASK_PARAMS,
                                                COEFFICIENT_PARAMS) {
    const Coefficients c = COEFFICIENTS;
    GRID_STRIDE(j, n / 4) {
        const long long i = 4 * j;
        const float4 xv = reinterpret_cast<const float4*>(x_t)[j];
        const float4 ev = reinterpret_cast<const float4*>(eps)[j];
        const float4 zv = reinterpret_cast<const float4*>(z)[j];
        const float4 yv = reinterpret_cast<const float4*>(y)[j];
        const long long m_index = mask_index(i, hw, channels, mask_batch_stride, mask_channel_stride, mask_pixel_stride);
        float4 mv;
        if (mask_pixel_stride == 0) {
            mv.x = mv.y = mv.z = mv.w = mask[m_index];
        } else {
            mv = reinterpret_cast<const float4*>(mask + m_index)[0];
        }
        float4 o;
        o.x = step_mask(xv.x, ev.x, zv.x, mv.x, yv.x, rho, c);
        o.y = step_mask(xv.y, ev.y, zv.y, mv.y, yv.y, rho, c);
        o.z = step_mask(xv.z, ev.z, zv.z, mv.z, yv.z, rho, c);
        o.w = step_mask(xv.w, ev.w, zv.w, mv.w, yv.w, rho, c);
        reinterpret_cast<float4*>(out)[j] = o;
    }
}

// ---------------------------------------------------------------- Fourier correction added

// correction: the inverse FFT's complex64 output, interleaved (re, im); only re is read.
extern "C" __global__ void diffpir_step_correction_v1(const float* __restrict__ x_t, const float* __restrict__ eps,
                                                      const float* __restrict__ z,
                                                      const float* __restrict__ correction,
                                                      float* __restrict__ out, long long n, COEFFICIENT_PARAMS) {
    const Coefficients c = COEFFICIENTS;
    GRID_STRIDE(i, n) { out[i] = step_correction(x_t[i], eps[i], z[i], correction[2 * i], c); }
}

extern "C" __global__ void diffpir_step_correction_v4(const float* __restrict__ x_t, const float* __restrict__ eps,
                                                      const float* __restrict__ z,
                                                      const float* __restrict__ correction,
                                                      float* __restrict__ out, long long n, COEFFICIENT_PARAMS) {
    const Coefficients c = COEFFICIENTS;
    GRID_STRIDE(j, n / 4) {
        const float4 xv = reinterpret_cast<const float4*>(x_t)[j];
        const float4 ev = reinterpret_cast<const float4*>(eps)[j];
        const float4 zv = reinterpret_cast<const float4*>(z)[j];
        const float4 c01 = reinterpret_cast<const float4*>(correction)[2 * j];  // (re0, im0, re1, im1)
        const float4 c23 = reinterpret_cast<const float4*>(correction)[2 * j + 1];
        float4 o;
        o.x = step_correction(xv.x, ev.x, zv.x, c01.x, c);
        o.y = step_correction(xv.y, ev.y, zv.y, c01.z, c);
        o.z = step_correction(xv.z, ev.z, zv.z, c23.x, c);
        o.w = step_correction(xv.w, ev.w, zv.w, c23.z, c);
        reinterpret_cast<float4*>(out)[j] = o;
    }
}
