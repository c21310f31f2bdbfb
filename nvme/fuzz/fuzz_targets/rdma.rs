//! Fuzz target: the NVMe/RDMA connection request private data and SGL descriptor checks
//! (`nvme::nvmf::rdma_proto::fuzz_rdma`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nvme::nvmf::rdma_proto::fuzz_rdma(data));
