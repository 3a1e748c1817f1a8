//! Device facts and memory statistics for the GPU benchmark.
//!
//! candle allocates through cudarc, which uses the device's default stream-ordered memory pool
//! (`cuMemAllocAsync`) when the device supports pools. The pool counts the bytes in use and their
//! high-water mark (`CU_MEMPOOL_ATTR_USED_MEM_HIGH`), which is exactly "peak GPU memory held by
//! tensors", including transient ones inside a step that a `cuMemGetInfo` sample would miss.

// Raw driver calls on the pool handle; unsafe by nature, confined here.
#![allow(unsafe_code)]

use std::ffi::c_void;

use candle_core::cuda_backend::cudarc::driver::{result, sys};
use candle_core::{CudaDevice, Result};

/// What the benchmark reports about the device.
#[derive(Debug, Clone)]
pub struct DeviceSummary {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
    pub total_bytes: usize,
    /// Whether allocations go through the stream-ordered pool (peak tracking works).
    pub pooled: bool,
}

fn driver_err(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::msg(format!("{what}: {e:?}"))
}

pub fn summary(dev: &CudaDevice) -> Result<DeviceSummary> {
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let attr = |a| {
        ctx.attribute(a)
            .map_err(|e| driver_err("cuDeviceGetAttribute", e))
    };
    use sys::CUdevice_attribute as A;
    Ok(DeviceSummary {
        name: ctx.name().map_err(|e| driver_err("cuDeviceGetName", e))?,
        compute_capability: (
            attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ),
        multiprocessors: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        total_bytes: ctx
            .total_mem()
            .map_err(|e| driver_err("cuDeviceTotalMem", e))?,
        pooled: ctx.has_async_alloc(),
    })
}

/// `(free, total)` bytes on the device now (`cuMemGetInfo`; counts every process and context).
pub fn free_and_total(dev: &CudaDevice) -> Result<(usize, usize)> {
    dev.cuda_stream()
        .context()
        .bind_to_thread()
        .map_err(|e| driver_err("cuCtxSetCurrent", e))?;
    result::mem_get_info().map_err(|e| driver_err("cuMemGetInfo", e))
}

fn default_pool(dev: &CudaDevice) -> Result<sys::CUmemoryPool> {
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread()
        .map_err(|e| driver_err("cuCtxSetCurrent", e))?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid out-pointer and the device handle comes from a live context.
    let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    r.result()
        .map_err(|e| driver_err("cuDeviceGetDefaultMemPool", e))?;
    Ok(pool)
}

fn pool_attr(dev: &CudaDevice, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let pool = default_pool(dev)?;
    let mut value: u64 = 0;
    // SAFETY: the memory-usage attributes are cuuint64_t, written through a valid pointer.
    let r =
        unsafe { sys::cuMemPoolGetAttribute(pool, attr, &mut value as *mut u64 as *mut c_void) };
    r.result()
        .map_err(|e| driver_err("cuMemPoolGetAttribute", e))?;
    Ok(value)
}

/// Bytes the pool hands out to live allocations now.
pub fn pool_used_bytes(dev: &CudaDevice) -> Result<u64> {
    pool_attr(
        dev,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
    )
}

/// High-water mark of [`pool_used_bytes`] since the last [`reset_pool_peak`].
pub fn pool_peak_bytes(dev: &CudaDevice) -> Result<u64> {
    pool_attr(dev, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
}

/// Restarts the high-water mark from the current usage.
pub fn reset_pool_peak(dev: &CudaDevice) -> Result<()> {
    let pool = default_pool(dev)?;
    let mut zero: u64 = 0;
    // SAFETY: USED_MEM_HIGH may only be set to 0 (resets it), through a valid cuuint64_t pointer.
    let r = unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            &mut zero as *mut u64 as *mut c_void,
        )
    };
    r.result()
        .map_err(|e| driver_err("cuMemPoolSetAttribute", e))
}
