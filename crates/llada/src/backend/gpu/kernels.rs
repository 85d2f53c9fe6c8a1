//! The GPU backend's kernels: WGSL compute shaders (`shaders/`), compiled once per
//! variant and recorded into the backend's command encoder. Each is tested against the
//! CPU backend's op in `tests` below (run on lavapipe by `.ci/run`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

/// The kernels, by name, with their WGSL source (the common prelude comes first).
const SHADERS: &[(&str, &str)] = &[
    ("embed", include_str!("shaders/embed.wgsl")),
    ("rms_norm", include_str!("shaders/rms_norm.wgsl")),
    ("linear", include_str!("shaders/linear.wgsl")),
    ("elementwise", include_str!("shaders/elementwise.wgsl")),
    ("gather", include_str!("shaders/gather.wgsl")),
    ("rope", include_str!("shaders/rope.wgsl")),
    ("kv_write", include_str!("shaders/kv_write.wgsl")),
    ("attention", include_str!("shaders/attention.wgsl")),
    ("read_sum", include_str!("shaders/read_sum.wgsl")),
    ("moe_combine", include_str!("shaders/moe_combine.wgsl")),
    ("greedy", include_str!("shaders/greedy.wgsl")),
];
const COMMON: &str = include_str!("shaders/common.wgsl");

/// Threads per workgroup of every kernel.
pub(super) const WORKGROUP: u32 = 64;
/// The most workgroups in one dimension of a dispatch.
const MAX_GROUPS: u32 = 65535;

/// A kernel and the values of its override constants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Variant {
    pub name: &'static str,
    pub constants: Vec<(&'static str, u32)>,
}

impl Variant {
    pub fn plain(name: &'static str) -> Self {
        Self {
            name,
            constants: Vec::new(),
        }
    }

    pub fn with(mut self, constant: &'static str, value: u32) -> Self {
        self.constants.push((constant, value));
        self
    }
}

/// Compiled pipelines and the encoder the ops of a pass are recorded into.
pub(super) struct Kernels {
    device: wgpu::Device,
    queue: wgpu::Queue,
    modules: HashMap<&'static str, wgpu::ShaderModule>,
    pipelines: Mutex<HashMap<Variant, wgpu::ComputePipeline>>,
    encoder: Mutex<Option<wgpu::CommandEncoder>>,
    /// Bound where a kernel's optional buffer is absent.
    empty: wgpu::Buffer,
    /// The first error the device reported (out of memory, a lost device): wgpu's
    /// default would panic, llada returns it from the next read.
    error: Arc<Mutex<Option<String>>>,
}

/// Workgroups for a one-dimensional job of `threads` threads (see `flat_index`).
pub(super) fn grid(threads: usize) -> (u32, u32, u32) {
    let groups = (threads as u32).div_ceil(WORKGROUP).max(1);
    let x = groups.min(MAX_GROUPS);
    (x, groups.div_ceil(x), 1)
}

/// Workgroups for a job of one workgroup per row (see `wg.y * groups.x + wg.x` in the
/// row kernels).
pub(super) fn row_grid(rows: usize) -> (u32, u32, u32) {
    let x = rows.clamp(1, MAX_GROUPS as usize);
    (x as u32, rows.div_ceil(x).max(1) as u32, 1)
}

impl Kernels {
    pub fn new(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let error = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&error);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = slot.lock().expect("error slot");
            if slot.is_none() {
                *slot = Some(match e {
                    wgpu::Error::OutOfMemory { .. } => "out of GPU memory".to_string(),
                    other => other.to_string(),
                });
            }
        }));
        let modules = SHADERS
            .iter()
            .map(|&(name, body)| {
                let source = format!("{COMMON}\n{body}");
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                });
                (name, module)
            })
            .collect();
        let empty = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("empty"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Self {
            device,
            queue,
            modules,
            pipelines: Mutex::new(HashMap::new()),
            encoder: Mutex::new(None),
            empty,
            error,
        }
    }

    pub fn empty(&self) -> &wgpu::Buffer {
        &self.empty
    }

    fn pipeline(&self, variant: &Variant) -> wgpu::ComputePipeline {
        let mut pipelines = self.pipelines.lock().expect("pipeline cache");
        if let Some(p) = pipelines.get(variant) {
            return p.clone();
        }
        let constants: Vec<(&str, f64)> = variant
            .constants
            .iter()
            .map(|&(k, v)| (k, f64::from(v)))
            .collect();
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(variant.name),
                layout: None,
                module: &self.modules[variant.name],
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        pipelines.insert(variant.clone(), pipeline.clone());
        pipeline
    }

    /// A buffer holding `data` (storage, copyable).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let bytes = as_bytes(data);
        if bytes.is_empty() {
            return self.zeros(label, 4);
        }
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// Writes `bytes` into `buffer` at `offset` before the next submitted work.
    pub fn write(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        self.queue.write_buffer(buffer, offset, bytes);
    }

    /// A zeroed storage buffer of `bytes` bytes (wgpu zeroes new buffers).
    pub fn zeros(&self, label: &str, bytes: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes.max(4) as u64).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Records one dispatch of `variant` with `params` (16-byte words of u32/f32 bits) as
    /// its uniform at binding 0 and `buffers` at bindings 1, 2, ...
    pub fn dispatch(
        &self,
        variant: &Variant,
        params: &[u32],
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32, u32),
    ) {
        let pipeline = self.pipeline(variant);
        let mut words = params.to_vec();
        words.resize(params.len().next_multiple_of(4).max(4), 0);
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: as_bytes(&words),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(
            buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: b.as_entire_binding(),
                }),
        );
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(variant.name),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.record(|encoder| {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(variant.name),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        });
    }

    /// Records a copy of `bytes` bytes between buffers.
    pub fn copy(&self, from: &wgpu::Buffer, to: &wgpu::Buffer, bytes: usize) {
        if bytes > 0 {
            self.record(|e| e.copy_buffer_to_buffer(from, 0, to, 0, bytes as u64));
        }
    }

    fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut slot = self.encoder.lock().expect("encoder");
        let encoder = slot.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        f(encoder);
    }

    /// Submits what was recorded so far.
    pub fn flush(&self) {
        if let Some(encoder) = self.encoder.lock().expect("encoder").take() {
            self.queue.submit([encoder.finish()]);
        }
    }

    /// Runs what was recorded, waits for it, and returns the first error the device
    /// reported.
    pub fn finish(&self) -> Result<(), String> {
        self.flush();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| format!("waiting for the GPU: {e}"))?;
        self.check()
    }

    fn check(&self) -> Result<(), String> {
        match self.error.lock().expect("error slot").clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Runs what was recorded and reads `buffer`'s first `len` f32 values back.
    pub fn read_f32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>, String> {
        let bytes = (len * 4) as u64;
        if bytes == 0 {
            self.flush();
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read back"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.record(|e| e.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes));
        self.flush();
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| format!("waiting for the GPU: {e}"))?;
        self.check()?;
        rx.recv()
            .map_err(|e| format!("reading back from the GPU: {e}"))?
            .map_err(|e| format!("reading back from the GPU: {e}"))?;
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| format!("reading back from the GPU: {e}"))?;
        let out = view
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        drop(view);
        staging.unmap();
        Ok(out)
    }
}

fn as_bytes<T: bytemuck::Pod>(data: &[T]) -> &[u8] {
    bytemuck::cast_slice(data)
}
