//! Which device runs a model: the `--device` choice and the adapter behind `gpu`.

use std::str::FromStr;

use crate::error::{Error, Result};

/// Where a model runs (`--device`, `LLADA_DEVICE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A hardware GPU when there is one, else the CPU; never a software adapter.
    #[default]
    Auto,
    Cpu,
    /// The best adapter there is: hardware first, a software one with a warning.
    Gpu,
}

impl DeviceChoice {
    pub fn name(self) -> &'static str {
        match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Gpu => "gpu",
        }
    }

    /// `LLADA_DEVICE` when set (and valid), else `auto`.
    pub fn from_env() -> Result<Self> {
        match std::env::var("LLADA_DEVICE") {
            Ok(v) if !v.trim().is_empty() => v.parse(),
            _ => Ok(DeviceChoice::Auto),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "gpu" => Ok(DeviceChoice::Gpu),
            other => Err(Error::InvalidRequest(format!(
                "unknown device {other:?} (use cpu, gpu or auto)"
            ))),
        }
    }
}

pub(super) fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Lower is better: discrete before integrated before virtual, software last.
fn rank(kind: wgpu::DeviceType) -> u8 {
    match kind {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The best adapter, hardware first; `None` when there is none at all.
pub(super) fn best_adapter(hardware_only: bool) -> Option<wgpu::Adapter> {
    let instance = instance();
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.retain(|a| !hardware_only || a.get_info().device_type != wgpu::DeviceType::Cpu);
    adapters.sort_by_key(|a| rank(a.get_info().device_type));
    adapters.into_iter().next()
}

/// The error for `--device gpu` on a machine without any adapter.
pub(super) fn no_adapter() -> Error {
    Error::Device(
        "no GPU adapter found: llada's GPU backend needs a Vulkan (Linux, Windows), Metal \
         (macOS) or DX12 (Windows) driver; on Linux install your GPU's Vulkan driver, or \
         Mesa's software one (Debian/Ubuntu: apt-get install libvulkan1 mesa-vulkan-drivers), \
         or run with --device cpu"
            .into(),
    )
}

/// Bytes of the adapter's device-local memory, where the driver says (Vulkan); `None`
/// elsewhere (Metal, DX12: wgpu does not say).
pub(super) fn memory_bytes(adapter: &wgpu::Adapter) -> Option<u64> {
    #[cfg(not(any(target_os = "macos", target_os = "ios", target_arch = "wasm32")))]
    {
        // SAFETY: only the physical device's memory properties are read, through the
        // handles of an adapter that outlives this call.
        let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
        let instance = hal.shared_instance().raw_instance();
        let props =
            unsafe { instance.get_physical_device_memory_properties(hal.raw_physical_device()) };
        let local = props
            .memory_heaps_as_slice()
            .iter()
            .filter(|heap| heap.flags.contains(ash::vk::MemoryHeapFlags::DEVICE_LOCAL))
            .map(|heap| heap.size)
            .sum();
        Some(local)
    }
    #[cfg(any(target_os = "macos", target_os = "ios", target_arch = "wasm32"))]
    {
        let _ = adapter;
        None
    }
}
