// Compiles a kernels/*.cu source as host C++ (g++), so its indexing and arithmetic are
// tested on CPU (tests/kernels/test_host_emulation.py). Only what our kernels use:
// __global__/__device__, float2/float4/make_float2, and the launch coordinates, which the
// test sets per emulated thread (threads run one after another).
#pragma once

struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }

struct uint3 { unsigned x, y, z; };
static uint3 blockIdx{0, 0, 0}, threadIdx{0, 0, 0}, blockDim{1, 1, 1}, gridDim{1, 1, 1};

extern "C" void host_emulation_set_thread(unsigned block, unsigned thread, unsigned block_dim, unsigned grid_dim) {
    blockIdx.x = block;
    threadIdx.x = thread;
    blockDim.x = block_dim;
    gridDim.x = grid_dim;
}

#define __global__
#define __device__
#define __forceinline__ inline
