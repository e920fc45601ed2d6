fn main() {
    std::process::exit(covseg::run());
}
