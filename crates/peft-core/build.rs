//! With the `cuda` feature: compiles `kernels/*.cu` to PTX with nvcc (as candle-kernels
//! does), for `src/ops/cuda`. Without it: nothing. nvcc is found through `NVCC`,
//! `CUDA_ROOT`/`CUDA_PATH`/`CUDA_HOME` (bin/nvcc) or `PATH`; the PTX targets
//! `compute_$CUDA_COMPUTE_CAP` (default 80: PTX is JIT-compiled forward, so sm_80 PTX
//! also runs on H100/H200). See scripts/cuda/ and docs/cuda.md.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in ["NVCC", "CUDA_ROOT", "CUDA_PATH", "CUDA_HOME", "CUDA_COMPUTE_CAP", "NVCC_CCBIN"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let cap = env::var("CUDA_COMPUTE_CAP").ok().map(|c| c.trim_end_matches(['a', 'f']).to_string());
    let cap = cap.filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_digit())).unwrap_or_else(|| "80".into());
    let nvcc = nvcc();
    {
        let name = "peft_ops";
        let src = PathBuf::from("kernels").join(format!("{name}.cu"));
        println!("cargo::rerun-if-changed={}", src.display());
        let out = out_dir.join(format!("{name}.ptx"));
        let mut cmd = Command::new(&nvcc);
        cmd.args(["--ptx", "-O3", "-std=c++17", "--expt-relaxed-constexpr"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-o")
            .arg(&out)
            .arg(&src);
        if let Ok(ccbin) = env::var("NVCC_CCBIN") {
            cmd.arg("-ccbin").arg(ccbin);
        }
        let status = cmd.status().unwrap_or_else(|e| {
            panic!("peft-core (feature cuda): cannot run nvcc at {}: {e}. Install the CUDA toolkit or run scripts/cuda/setup.sh, and set CUDA_ROOT or NVCC.", nvcc.display())
        });
        if !status.success() {
            panic!("peft-core (feature cuda): nvcc failed on {} ({status})", src.display());
        }
    }
}

fn nvcc() -> PathBuf {
    if let Some(p) = env::var_os("NVCC") {
        return p.into();
    }
    for var in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = env::var_os(var) {
            let p = PathBuf::from(root).join("bin").join("nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    "nvcc".into()
}
