fn main() {
    covseg_stages::allocator::keep_freed_memory();
    std::process::exit(covseg::run());
}
