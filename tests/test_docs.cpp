// The reference docs against the binary: docs/cli.md lists exactly the flags each subcommand's
// --help shows, with the same defaults; docs/formats.md's tables list exactly the paths and types
// of a fresh checkpoint, KV file and infer output; no user-facing text cites an unshipped document.
#include <hdf5.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "test_train_util.h"

namespace kvc {
namespace {

using test::RunResult;
using test::TempDir;

std::string source_file(const std::string& relative) {
  return test::read_text(std::string(KVC_SOURCE_DIR) + "/" + relative);
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(' ');
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(' ') - a + 1);
}

// The cells of a Markdown table row "| a | b |" (backticks kept).
std::vector<std::string> cells(const std::string& row) {
  std::vector<std::string> out;
  std::string cell;
  bool code = false;
  for (size_t i = 1; i < row.size(); ++i) {
    if (row[i] == '`') code = !code;
    if (row[i] == '|' && !code) {
      out.push_back(trim(cell));
      cell.clear();
    } else {
      cell += row[i];
    }
  }
  return out;
}

std::string unquote(const std::string& cell) {
  std::string out;
  for (char c : cell) {
    if (c != '`') out += c;
  }
  return out;
}

// ---- docs/cli.md against --help

// The subcommands the binary registers, from `kvcompress --help`.
std::vector<std::string> registered_subcommands(const std::string& dir) {
  const RunResult top = test::run_kvcompress("--help", dir);
  REQUIRE(top.exit_code == 0);
  std::vector<std::string> out;
  bool in_list = false;
  for (const std::string& line : lines_of(top.out)) {
    if (line.rfind("Subcommands:", 0) == 0) {
      in_list = true;
    } else if (in_list && line.size() > 2 && line[0] == ' ' && line[2] != ' ') {
      out.push_back(line.substr(2, line.find(' ', 2) - 2));
    }
  }
  return out;
}

struct HelpFlag {
  std::string def;  // the default --help shows, "required", or ""
};

// name -> default of every flag and positional of `kvcompress SUB --help` but --help itself.
std::map<std::string, HelpFlag> help_flags(const std::string& sub, const std::string& dir) {
  const RunResult r = test::run_kvcompress(sub + " --help", dir);
  REQUIRE(r.exit_code == 0);
  std::map<std::string, HelpFlag> out;
  for (const std::string& line : lines_of(r.out)) {
    if (line.size() < 3 || line.rfind("  ", 0) != 0 || line[2] == ' ') continue;
    const size_t name_end = line.find(' ', 2);
    const std::string names = line.substr(2, name_end - 2);
    // The signature: what follows the name up to the description ("INT:POSITIVE=2", "TEXT
    // REQUIRED", "INT [2]" in newer CLI11).
    std::string sig;
    if (name_end != std::string::npos) {
      const size_t start = line.find_first_not_of(' ', name_end);
      if (start == name_end + 1) sig = line.substr(start, line.find("  ", start) - start);
    }
    HelpFlag f;
    if (sig.find("REQUIRED") != std::string::npos) {
      f.def = "required";
    } else if (sig.find('[') != std::string::npos) {
      f.def = sig.substr(sig.find('[') + 1, sig.find(']') - sig.find('[') - 1);
    } else if (sig.find('=') != std::string::npos) {
      f.def = sig.substr(sig.rfind('=') + 1);
    }
    std::stringstream list(names);
    for (std::string name; std::getline(list, name, ',');) {
      if (name == "--help" || name == "-h") continue;
      if (name.rfind("--", 0) == 0 || name[0] != '-') out[name] = f;
    }
  }
  return out;
}

// name -> default cell of the flag rows in the "## SUB" section of docs/cli.md; `found` says
// whether the section exists.
std::map<std::string, std::string> doc_flags(const std::string& doc, const std::string& sub,
                                             bool* found) {
  std::map<std::string, std::string> out;
  bool in_section = false;
  *found = false;
  for (const std::string& line : lines_of(doc)) {
    if (line.rfind("## ", 0) == 0) {
      in_section = trim(line.substr(3)) == sub;
      *found = *found || in_section;
      continue;
    }
    if (!in_section || line.rfind("| `", 0) != 0) continue;
    const std::vector<std::string> c = cells(line);
    REQUIRE(c.size() >= 3);
    const std::string first = unquote(c[0]);
    out[first.substr(0, first.find(' '))] = unquote(c[1]);
  }
  return out;
}

TEST_CASE("docs: cli.md lists every flag of every subcommand with its --help default") {
  TempDir dir("docs_cli");
  const std::string doc = source_file("docs/cli.md");
  const std::vector<std::string> subs = registered_subcommands(dir.path);
  REQUIRE(subs.size() >= 7);
  for (const std::string& sub : subs) {
    bool found = false;
    const std::map<std::string, std::string> documented = doc_flags(doc, sub, &found);
    CHECK_MESSAGE(found, "docs/cli.md has no section '## ", sub, "' for the subcommand ", sub);
    const std::map<std::string, HelpFlag> shown = help_flags(sub, dir.path);
    CHECK(!shown.empty());
    for (const auto& [flag, f] : shown) {
      const auto it = documented.find(flag);
      CHECK_MESSAGE(it != documented.end(), "docs/cli.md, section '## ", sub, "': no row for ",
                    flag, " (kvcompress ", sub, " --help lists it)");
      if (it == documented.end() || f.def.empty()) continue;
      CHECK_MESSAGE(it->second == f.def, "docs/cli.md, section '## ", sub, "': ", flag,
                    " defaults to '", it->second, "' there but '", f.def, "' in --help");
    }
    for (const auto& [flag, def] : documented) {
      CHECK_MESSAGE(shown.count(flag) == 1, "docs/cli.md, section '## ", sub, "' lists ", flag,
                    ", which kvcompress ", sub, " --help does not have");
    }
  }
}

TEST_CASE("docs: --help and the README point to the docs; no user-facing text cites SPEC") {
  TempDir dir("docs_text");
  std::map<std::string, std::string> texts;  // where -> text
  texts["kvcompress --help"] = test::run_kvcompress("--help", dir.path).out;
  for (const std::string& sub : registered_subcommands(dir.path)) {
    texts["kvcompress " + sub + " --help"] = test::run_kvcompress(sub + " --help", dir.path).out;
  }
  CHECK(texts["kvcompress --help"].find("docs/cli.md") != std::string::npos);
  CHECK(texts["kvcompress train --help"].find("docs/cli.md") != std::string::npos);
  const std::string readme = source_file("README.md");
  CHECK(readme.find("docs/cli.md") != std::string::npos);
  CHECK(readme.find("docs/formats.md") != std::string::npos);
  texts["README.md"] = readme;
  const std::filesystem::path root(KVC_SOURCE_DIR);
  for (const char* folder : {"docs", "tools"}) {
    for (const auto& e : std::filesystem::recursive_directory_iterator(root / folder)) {
      const std::string ext = e.path().extension().string();
      if (e.is_regular_file() && (ext == ".md" || ext == ".py" || ext == ".sh")) {
        texts[std::filesystem::relative(e.path(), root).string()] = test::read_text(e.path());
      }
    }
  }
  CHECK(texts.size() >= 12);
  for (const auto& [where, text] : texts) {
    for (const char* cited : {"SPEC", "sections 4 and 7", "../shared"}) {
      CHECK_MESSAGE(text.find(cited) == std::string::npos, where, " mentions '", cited,
                    "', a document that does not ship; describe it or point to docs/");
    }
  }
}

// ---- docs/formats.md against the files

struct DocPath {
  std::string path, type;
  bool always = false;
};

// The rows of the first table after the heading `heading` in docs/formats.md.
std::vector<DocPath> doc_paths(const std::string& doc, const std::string& heading) {
  std::vector<DocPath> out;
  bool in_section = false;
  for (const std::string& line : lines_of(doc)) {
    if (line.rfind("## ", 0) == 0) in_section = line == heading;
    if (!in_section || line.rfind("| `", 0) != 0) continue;
    const std::vector<std::string> c = cells(line);
    REQUIRE(c.size() >= 4);
    out.push_back({unquote(c[0]), c[1], c[2] == "always"});
  }
  REQUIRE_MESSAGE(!out.empty(), "docs/formats.md has no table under '", heading, "'");
  return out;
}

std::string type_text(hid_t type) {
  switch (H5Tget_class(type)) {
    case H5T_STRING:
      return "string";
    case H5T_INTEGER:
      return H5Tget_size(type) == 8 && H5Tget_sign(type) == H5T_SGN_2 ? "int64" : "integer";
    case H5T_FLOAT:
      return H5Tget_size(type) == 8 ? "float64" : H5Tget_size(type) == 4 ? "float32" : "float";
    default:
      return "other";
  }
}

herr_t collect_attr_name(hid_t, const char* name, const H5A_info_t*, void* names) {
  static_cast<std::vector<std::string>*>(names)->push_back(name);
  return 0;
}

// The attributes of `obj` (at `path`) as "path@name" -> type.
void add_attributes(hid_t obj, const std::string& path, std::map<std::string, std::string>* out) {
  std::vector<std::string> names;
  H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_attr_name, &names);
  for (const std::string& name : names) {
    const hid_t a = H5Aopen(obj, name.c_str(), H5P_DEFAULT);
    const hid_t t = H5Aget_type(a);
    (*out)[path + "@" + name] = type_text(t);
    H5Tclose(t);
    H5Aclose(a);
  }
}

// Every group, dataset and attribute of an HDF5 file as "/path" or "/object@attribute" -> type.
std::map<std::string, std::string> file_layout(const std::string& file) {
  std::map<std::string, std::string> out;
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  REQUIRE(f >= 0);
  std::vector<std::string> groups{"/"};
  while (!groups.empty()) {
    const std::string g = groups.back();
    groups.pop_back();
    const hid_t gid = H5Gopen2(f, g.c_str(), H5P_DEFAULT);
    add_attributes(gid, g, &out);
    H5G_info_t info;
    H5Gget_info(gid, &info);
    for (hsize_t i = 0; i < info.nlinks; ++i) {
      char name[512];
      H5Lget_name_by_idx(gid, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof(name), H5P_DEFAULT);
      const std::string path = (g == "/" ? "" : g) + "/" + name;
      const hid_t obj = H5Oopen(gid, name, H5P_DEFAULT);
      if (H5Iget_type(obj) == H5I_GROUP) {
        out[path] = "group";
        groups.push_back(path);
      } else {
        const hid_t t = H5Dget_type(obj);
        out[path] = type_text(t);
        H5Tclose(t);
        add_attributes(obj, path, &out);
      }
      H5Oclose(obj);
    }
    H5Gclose(gid);
  }
  H5Fclose(f);
  return out;
}

// True when `path` fits the documented `pattern`, where "<name>" stands for one path component.
bool matches(const std::string& pattern, const std::string& path) {
  size_t p = 0, q = 0;
  while (p < pattern.size()) {
    if (pattern[p] == '<') {
      p = pattern.find('>', p) + 1;
      const size_t end = std::min(path.find_first_of("/@", q), path.size());
      if (end == q) return false;  // an empty component
      q = end;
    } else {
      if (q >= path.size() || pattern[p] != path[q]) return false;
      ++p, ++q;
    }
  }
  return q == path.size();
}

// Both ways: every documented path is in the file with its type (unless it is written only
// sometimes and absent), every path of the file is documented.
void check_layout(const std::string& heading, const std::string& file) {
  INFO("docs/formats.md, '", heading, "', against ", file);
  const std::vector<DocPath> doc = doc_paths(source_file("docs/formats.md"), heading);
  const std::map<std::string, std::string> layout = file_layout(file);
  for (const DocPath& d : doc) {
    bool present = false;
    for (const auto& [path, type] : layout) {
      if (!matches(d.path, path)) continue;
      present = true;
      CHECK_MESSAGE(type == d.type, d.path, " is documented as ", d.type, ", the file has ", path,
                    " as ", type);
    }
    CHECK_MESSAGE((present || !d.always), d.path, " (", d.type, ", always) is not in the file");
  }
  for (const auto& [path, type] : layout) {
    const bool documented = std::any_of(doc.begin(), doc.end(),
                                        [&](const DocPath& d) { return matches(d.path, path); });
    CHECK_MESSAGE(documented, file, " has ", path, " (", type, "), which docs/formats.md's '",
                  heading, "' table does not list");
  }
}

TEST_CASE("docs: formats.md lists every path and type of a fresh checkpoint, KV file and output") {
  TempDir dir("docs_formats");
  // A resume that changes the length, with dropout: the conditional paths are written too.
  RunResult r = test::run_kvcompress(
      "train --device cpu --progress none --compressor enhanced_mlp --dropout 0.1 --seq 32 "
      "--steps 4 --eval-every 2 --out " +
          dir / "run",
      dir.path);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  r = test::run_kvcompress(
      "train --device cpu --progress none --steps 6 --resume " + dir / "run/checkpoint.h5",
      dir.path);
  REQUIRE(r.exit_code == 0);
  check_layout("## Checkpoint", dir / "run/checkpoint.h5");
  const std::map<std::string, std::string> ck = file_layout(dir / "run/checkpoint.h5");
  CHECK(ck.count("/metrics/resumed_at") == 1);
  CHECK(ck.count("/rng/dropout") == 1);

  r = test::run_kvcompress("gen-data --out " + dir / "kv.h5" + " --count 3 --seq 32", dir.path);
  REQUIRE(r.exit_code == 0);
  check_layout("## KV file", dir / "kv.h5");
  r = test::run_kvcompress("infer --device cpu --checkpoint " + dir / "run/checkpoint.h5" +
                               " --data " + dir / "kv.h5" + " --out " + dir / "out.h5",
                           dir.path);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  check_layout("## infer output", dir / "out.h5");
}

TEST_CASE("docs: a documented <name> stands for exactly one path component") {
  CHECK(matches("/params/<key>", "/params/k_compress.net.0.weight"));
  CHECK(matches("/optim@lr", "/optim@lr"));
  CHECK_FALSE(matches("/params/<key>", "/params/a/b"));
  CHECK_FALSE(matches("/optim/exp_avg/<key>", "/optim/exp_avg_sq/x"));
  CHECK_FALSE(matches("/@step", "/@steps"));
}

}  // namespace
}  // namespace kvc
