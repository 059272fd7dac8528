//! berthd: the CRI manager daemon. The CRI RuntimeService arrives with a later issue;
//! until then this binary only reports that it is a placeholder.

fn main() {
    eprintln!("berthd: the CRI daemon is not implemented yet; see the README");
    std::process::exit(2);
}
