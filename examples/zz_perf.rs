use std::time::{Duration, Instant};
use multiproc::Pool;
fn sq(x: u64) -> u64 { x * x }
fn main() {
    for _ in 0..4 {
        let t1 = Instant::now();
        let pool = Pool::with_processes(2).unwrap();
        let t2 = Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        let t3 = Instant::now();
        pool.map(sq, 0..10u64).unwrap();
        let t4 = Instant::now();
        pool.map(sq, 0..10u64).unwrap();
        let t5 = Instant::now();
        pool.close(); pool.join().unwrap();
        let t6 = Instant::now();
        println!("build {:?} map(settled) {:?} map2 {:?} join {:?}", t2-t1, t4-t3, t5-t4, t6-t5);
    }
}
