fn main() {
    std::process::exit(expert::cli::main());
}
