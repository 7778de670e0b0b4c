use candle_core::{Device, Tensor};
use std::time::Instant;
fn t<F: FnMut()>(name: &str, flops: f64, mut f: F) {
    f();
    let n = 50;
    let s = Instant::now();
    for _ in 0..n {
        f();
    }
    let dt = s.elapsed().as_secs_f64() / n as f64;
    println!(
        "{name:<40} {:8.3} ms {:6.1} GFLOP/s",
        dt * 1e3,
        flops / dt / 1e9
    );
}
fn main() {
    let d = Device::Cpu;
    for b in [64usize, 256] {
        let x = Tensor::randn(0f32, 1., (b, 784), &d).unwrap();
        let w = Tensor::randn(0f32, 1., (512, 784), &d).unwrap();
        let g = Tensor::randn(0f32, 1., (b, 512), &d).unwrap();
        let fl = 2.0 * (b * 784 * 512) as f64;
        t(&format!("b{b} x·wT (view)"), fl, || {
            x.matmul(&w.t().unwrap()).unwrap();
        });
        let wt = w.t().unwrap().contiguous().unwrap();
        t(&format!("b{b} x·wT (contig)"), fl, || {
            x.matmul(&wt).unwrap();
        });
        t(&format!("b{b} g·w"), fl, || {
            g.matmul(&w).unwrap();
        });
        t(&format!("b{b} xT·g (view)"), fl, || {
            x.t().unwrap().matmul(&g).unwrap();
        });
        t(&format!("b{b} gT·x (view)"), fl, || {
            g.t().unwrap().matmul(&x).unwrap();
        });
        let xt = x.t().unwrap().contiguous().unwrap();
        t(&format!("b{b} xT(contig)·g"), fl, || {
            xt.matmul(&g).unwrap();
        });
        t(&format!("b{b} relu"), 0.0, || {
            g.relu().unwrap();
        });
        t(&format!("b{b} add"), 0.0, || {
            (&g + &g).unwrap();
        });
    }
}
