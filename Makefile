# Makefile for vecidx -- GNU make.
#
#   make                  libraries, the vecidx command-line tool, examples,
#                         test programs, benchmark tools
#   make test             build and run the test suite, the command-line tool's
#                         tests, the examples and (with python3, pytest and
#                         numpy) the Python binding's tests
#   make examples-run     run the examples as `make test` does
#   make sanitize         the tests and the command-line tool under
#                         AddressSanitizer + UBSan
#   make tsan             the concurrency tests and examples/recommend under
#                         ThreadSanitizer
#   make soak             the file-backed stress tests under ThreadSanitizer,
#                         SOAK_SECONDS (default 40) per configuration
#   make cross-test       a selection of the tests (CROSS_TESTS), built for
#                         aarch64 and armhf and run under qemu-user,
#                         and the check that index files written here open
#                         and answer the same there (tests/portab)
#   make test-nosimd      the tests with scalar kernels only (-DVECIDX_NO_SIMD)
#   make test-m32         the tests built with -m32 (skipped without multilib)
#   make crash-soak       the crash tests with CRASH_TRIALS (default 20) times
#                         the usual number of trials
#   make fuzz             libFuzzer on vecidx_open, then on API call sequences
#                         (fuzz/fuzz_api.c), FUZZ_TIME seconds each (clang)
#   make install          PREFIX=/usr/local, DESTDIR honoured; installs the
#                         header, libraries, vecidx.pc and bin/vecidx
#   make format-check     clang-format --dry-run -Werror on the C sources
#   make bench-compare    bench/vecidx-compare, bench/persist-compare
#                         (libhnswlib-dev, libfaiss-dev)
#   make sqlite           sqlite/vecidx_sqlite.so, the SQLite loadable
#                         extension (needs libsqlite3-dev; part of `make`
#                         when it is installed, skipped when not)
#   make sqlite-crash     the extension's kill -9 crash test with
#                         SQLITE_CRASH_TRIALS (default 2000) trials
#   make sqlite-sanitize  the extension's tests under ASan + UBSan
#   make bench-ab OLD=REV [NEW=REV]
#                         bench/vecidx-ab: vecidx.c of git revision REV
#                         against the working tree's (or NEW's), in one
#                         program (bench/ab-build.sh)
#   make clean
#
# CC is overridable (make CC=clang); add flags with EXTRA_CFLAGS.

# ---- Version: defined once, in vecidx.h --------------------------------------
vx_field = $(shell awk '$$2 == "VECIDX_VERSION_$(1)" { print $$3 }' vecidx.h)
VERSION_MAJOR := $(call vx_field,MAJOR)
VERSION_MINOR := $(call vx_field,MINOR)
VERSION_PATCH := $(call vx_field,PATCH)
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

# ---- Tools and flags ---------------------------------------------------------
CLANG_FORMAT ?= clang-format
PYTHON ?= /usr/bin/python3

WARNINGS = -Wall -Wextra -Wpedantic -Werror -Wshadow -Wstrict-prototypes \
           -Wmissing-prototypes -Wvla
CFLAGS = -std=c11 -O3 $(WARNINGS) $(EXTRA_CFLAGS)
CXXWARNINGS = -Wall -Wextra -Wpedantic -Werror
LDLIBS = -pthread -lm

# Flags of each test build. The library itself never gets -march: it picks
# its SIMD kernels at run time.
TEST_CFLAGS = $(CFLAGS) -g
NOSIMD_CFLAGS = $(CFLAGS) -g -DVECIDX_NO_SIMD
M32_CFLAGS = $(CFLAGS) -g -m32
SAN_CC ?= $(CC)
TSAN_CC ?= $(CC)
SAN_BASE = -std=c11 $(WARNINGS) -g -fno-omit-frame-pointer $(EXTRA_CFLAGS)
# ASan at -O2, not the usual -O1: on a 2-core Zen 3 make sanitize took
# 318 s instead of 378 s, 21 s more to compile vecidx_test included. TSan
# stays at -O1: at -O2 make tsan was no faster (137 s against 133 s).
ASAN_CFLAGS = $(SAN_BASE) -O2 -fsanitize=address,undefined \
              -fno-sanitize-recover=all
TSAN_CFLAGS = $(SAN_BASE) -O1 -fsanitize=thread
# Test-name filter for `make tsan`; TSAN_FILTER= runs every test under TSan.
TSAN_FILTER ?= concurrency

# Cross builds are static so that qemu-user needs no target sysroot.
CROSS_AARCH64 ?= aarch64-linux-gnu-gcc
CROSS_ARMHF ?= arm-linux-gnueabihf-gcc
QEMU_AARCH64 ?= qemu-aarch64
QEMU_ARM ?= qemu-arm
CROSS_CFLAGS = -std=c11 -O2 $(WARNINGS) -static $(EXTRA_CFLAGS)
# Debian's armhf baseline has no NEON; this build turns it on so the 32-bit
# NEON kernels are tested too.
CROSS_NEON_CFLAGS = $(CROSS_CFLAGS) -mfpu=neon-vfpv4

FUZZ_CC ?= clang
FUZZ_TIME ?= 60
CRASH_TRIALS ?= 20

# Sanitizer binaries run with address-space randomisation off where the
# system allows it: older sanitizer runtimes fail on kernels with large
# vm.mmap_rnd_bits ("unexpected memory mapping").
NORAND := $(shell setarch $$(uname -m) -R true >/dev/null 2>&1 && \
                  echo setarch $$(uname -m) -R)

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
INCLUDEDIR ?= $(PREFIX)/include
LIBDIR ?= $(PREFIX)/lib
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
INSTALL ?= install

# ---- Files -------------------------------------------------------------------
SONAME = libvecidx.so.$(VERSION_MAJOR)
EXAMPLES := $(patsubst %.c,%,$(sort $(wildcard examples/*.c)))
# The command-line tool, tools/vecidx-cli.c, is built as tools/vecidx and
# installed as $(BINDIR)/vecidx.
CLI_SRC := $(wildcard tools/vecidx-cli.c)
CLI := $(if $(CLI_SRC),tools/vecidx)
CLI_TEST := $(wildcard tests/cli/cli_test.sh)
# Every bench/*.c is a program of its own, but for the old-vs-new A/B
# program and its shim, which `make bench-ab` builds (bench/ab-build.sh).
AB_SRCS := bench/vecidx-ab.c bench/ab-shim.c
BENCH := $(patsubst %.c,%,$(sort $(filter-out $(AB_SRCS),\
                                              $(wildcard bench/*.c))))
BENCH_HDRS := $(wildcard bench/*.h)
COMPARE_SRC := $(wildcard bench/compare.cpp)
PERSIST_COMPARE := $(if $(wildcard bench/persist-compare.cpp),bench/persist-compare)
PY_TESTS := $(wildcard python/tests)
# examples/sqlite_*.py need the SQLite extension, not the Python binding:
# examples-run runs them when the extension is built.
SQLITE_EXAMPLES := $(sort $(wildcard examples/sqlite_*.py))
PY_EXAMPLES := $(sort $(filter-out $(SQLITE_EXAMPLES),$(wildcard examples/*.py)))
FUZZ_REGRESS := $(sort $(wildcard fuzz/regress/*))
FORMAT_SRCS := vecidx.c vecidx.h $(wildcard tests/*.c tests/*.h tests/*/*.c \
                                   examples/*.c bench/*.c bench/*.h fuzz/*.c \
                                   tools/*.c sqlite/*.c bench/sqlite/*.c)

# Test programs. tests/*.c form one binary, tests/vecidx_test; it does not
# link the library: tests/test_internal.c includes vecidx.c (white-box),
# which provides every public symbol. tests/core/core_test.c and
# tests/crash/crash_test.c are programs of their own, also including
# vecidx.c. Every one ends with "N passed, N failed" and exits non-zero on
# failure; the first two take a test-name filter as argument.
TEST_SRCS := $(sort $(wildcard tests/*.c))
TEST_HDRS := $(wildcard tests/*.h)
TEST_PROGS := $(if $(TEST_SRCS),tests/vecidx_test) \
              $(if $(wildcard tests/core/core_test.c),tests/core/core_test) \
              $(if $(wildcard tests/crash/crash_test.c),tests/crash/crash_test)
TEST_PROGS := $(strip $(TEST_PROGS))
# Every program but the crash tests, which test I/O logic, not threads or
# kernels: run under TSan (the concurrency tests) and with 32-bit NEON.
NOCRASH_PROGS := $(filter-out tests/crash/crash_test,$(TEST_PROGS))
MAIN_TEST := $(filter tests/vecidx_test,$(TEST_PROGS))
CORE_TEST := $(filter tests/core/core_test,$(TEST_PROGS))
CRASH_TEST := $(filter tests/crash/crash_test,$(TEST_PROGS))
TEST_CXX := $(wildcard tests/test_cxx.cpp)
TEST_CXX_BIN := $(if $(TEST_CXX),tests/vecidx_test_cxx)
FUZZ_REPLAY := $(if $(and $(FUZZ_REGRESS),$(wildcard fuzz/fuzz_open.c)),\
                    fuzz/fuzz_open-replay)
# The portability check, tests/portab/portab.c: index files of every kind
# written by this machine's build, with what they answer, into
# PORTAB_DATA; `make test` checks them natively, test-nosimd with the
# scalar kernels, cross-test under qemu for aarch64 and 32-bit ARM.
PORTAB := $(if $(wildcard tests/portab/portab.c),tests/portab/portab)
PORTAB_DATA := tests/portab/data
PORTAB_FILES := $(if $(PORTAB),$(PORTAB_DATA)/answers.txt)
# The API-sequence fuzzer's replay driver runs its seed corpus and
# fuzz/api-regress (inputs that found library bugs, fixed since) in
# `make test`, and under ASan in `make sanitize`.
API_REPLAY := $(if $(and $(wildcard fuzz/fuzz_api.c),$(wildcard fuzz/api-seeds)),\
                   fuzz/fuzz_api-replay)

.PHONY: all lib test test-half1 test-half2 examples-run sanitize \
        sanitize-half1 sanitize-half2 tsan tsan-main tsan-rest soak \
        cross-test test-nosimd test-nosimd-half1 test-nosimd-half2 \
        cross-test-aarch64 cross-test-armhf \
        cross-test-armhf-neon test-m32 crash-soak fuzz install uninstall \
        clean format format-check \
        bench-compare bench-ab

all: lib $(CLI) $(EXAMPLES) $(TEST_PROGS) $(TEST_CXX_BIN) $(BENCH) \
     $(API_REPLAY) $(PORTAB) $(SQLITE_EXT)

lib: libvecidx.a libvecidx.so

# ---- SQLite extension ----------------------------------------------------------
# sqlite/vecidx_sqlite.c compiled with vecidx.c into one loadable module; the
# library itself has no SQLite dependency. Built when the compiler finds
# sqlite3ext.h (Debian: libsqlite3-dev); its tests run in `make test` when
# $(PYTHON)'s sqlite3 module can load extensions and the sqlite3 shell is
# there (Debian: sqlite3), and are skipped with a message otherwise.
SQLITE_SRC := $(wildcard sqlite/vecidx_sqlite.c)
SQLITE_HAVE := $(if $(SQLITE_SRC),$(shell printf '\043include <sqlite3ext.h>\n' | \
    $(CC) -E -x c - >/dev/null 2>&1 && echo yes))
SQLITE_EXT := $(if $(SQLITE_HAVE),sqlite/vecidx_sqlite.so)
SQLITE_CFLAGS = -std=c11 -O2 $(WARNINGS) -fPIC -shared -fvisibility=hidden \
                $(EXTRA_CFLAGS)
SQLITE_CRASH_TRIALS ?= 2000
SQLITE_BENCH := $(if $(and $(SQLITE_HAVE),$(wildcard bench/sqlite/sql_overhead.c)),\
                     bench/sqlite/sql_overhead)

.PHONY: sqlite sqlite-crash sqlite-sanitize vx-sqlite-test
ifneq ($(SQLITE_EXT),)
sqlite: $(SQLITE_EXT) $(SQLITE_BENCH)
else
sqlite:
	@echo "sqlite skipped: no sqlite3ext.h (apt-get install libsqlite3-dev)"
endif

sqlite/vecidx_sqlite.so: sqlite/vecidx_sqlite.c vecidx.c vecidx.h
	$(CC) $(SQLITE_CFLAGS) -I. -o $@ sqlite/vecidx_sqlite.c vecidx.c \
	    $(LDFLAGS) $(LDLIBS)

# In a directory of its own: SQLite derives the entry point from the name.
sqlite/asan/vecidx_sqlite.so: sqlite/vecidx_sqlite.c vecidx.c vecidx.h
	@mkdir -p sqlite/asan
	$(SAN_CC) $(ASAN_CFLAGS) -fPIC -shared -fvisibility=hidden -I. -o $@ \
	    sqlite/vecidx_sqlite.c vecidx.c $(LDFLAGS) $(LDLIBS)

# The SQL path's own cost per query, from C (links the system's SQLite).
bench/sqlite/sql_overhead: bench/sqlite/sql_overhead.c vecidx.c vecidx.h
	$(CC) $(CFLAGS) -I. -o $@ bench/sqlite/sql_overhead.c vecidx.c \
	    $(LDFLAGS) -lsqlite3 $(LDLIBS)

vx_have_sqlite = $(PYTHON) -c 'import sqlite3; \
	sqlite3.connect(":memory:").enable_load_extension(True)' 2>/dev/null && \
	command -v sqlite3 >/dev/null || \
	{ echo "sqlite tests skipped: $(PYTHON)'s sqlite3 cannot load" \
	       "extensions or there is no sqlite3 shell (apt-get install sqlite3)"; \
	  exit 0; }

# Through the sqlite3 shell and Python's sqlite3 module, then 200 kill -9
# crash trials (about 10 s); sqlite-crash runs more.
vx-sqlite-test: $(SQLITE_EXT)
	$(call vx_step,$(PYTHON) tests/sqlite/test_sqlite.py $(SQLITE_EXT))
	$(call vx_step,sh tests/sqlite/shell_test.sh $(SQLITE_EXT))
	$(call vx_step,$(PYTHON) tests/sqlite/crash_test.py $(SQLITE_EXT) 200)

ifneq ($(SQLITE_EXT),)
sqlite-crash: $(SQLITE_EXT)
	$(call vx_step,$(PYTHON) tests/sqlite/crash_test.py $(SQLITE_EXT) $(SQLITE_CRASH_TRIALS))

# Python itself is not instrumented: the ASan runtime (gcc's) is preloaded.
# Python frees what it holds at exit (PYTHONMALLOC=malloc lets LSan see
# its blocks), so any leak reported is the extension's or SQLite's.
ASAN_RT = $(shell $(SAN_CC) -print-file-name=libasan.so)
sqlite-sanitize: sqlite/asan/vecidx_sqlite.so
	$(call vx_step,LD_PRELOAD=$(ASAN_RT) ASAN_OPTIONS=detect_leaks=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONMALLOC=malloc \
	    $(NORAND) $(PYTHON) tests/sqlite/test_sqlite.py sqlite/asan/vecidx_sqlite.so)
	$(call vx_step,LD_PRELOAD=$(ASAN_RT) ASAN_OPTIONS=detect_leaks=0 \
	    $(NORAND) $(PYTHON) tests/sqlite/crash_test.py sqlite/asan/vecidx_sqlite.so 100)
else
sqlite-crash sqlite-sanitize:
	@echo "$@ skipped: no sqlite3ext.h (apt-get install libsqlite3-dev)"
endif

# ---- Library -----------------------------------------------------------------
# One position-independent object serves both libraries, so the static
# library can also be linked into other shared objects.
vecidx.o: vecidx.c vecidx.h
	$(CC) $(CFLAGS) -fPIC -pthread -c vecidx.c -o $@

libvecidx.a: vecidx.o
	rm -f $@
	$(AR) rcs $@ vecidx.o

libvecidx.so: vecidx.o
	$(CC) $(CFLAGS) -shared -Wl,-soname,$(SONAME) -o $@ vecidx.o \
	    $(LDFLAGS) $(LDLIBS)

# ---- Programs ----------------------------------------------------------------
examples/%: examples/%.c vecidx.h libvecidx.a
	$(CC) $(CFLAGS) -I. -o $@ $< libvecidx.a $(LDFLAGS) $(LDLIBS)

tools/vecidx: tools/vecidx-cli.c vecidx.h libvecidx.a
	$(CC) $(CFLAGS) -I. -o $@ tools/vecidx-cli.c libvecidx.a $(LDFLAGS) $(LDLIBS)

# The tool under ASan + UBSan, for `make sanitize`: compiled with vecidx.c
# so that the library is instrumented too.
tools/vecidx-asan: tools/vecidx-cli.c vecidx.c vecidx.h
	$(SAN_CC) $(ASAN_CFLAGS) -I. -o $@ tools/vecidx-cli.c vecidx.c \
	    $(LDFLAGS) $(LDLIBS)

bench/%: bench/%.c $(BENCH_HDRS) vecidx.h libvecidx.a
	$(CC) $(CFLAGS) -I. -o $@ $< libvecidx.a $(LDFLAGS) $(LDLIBS)

# The same measurements on hnswlib and FAISS: built only on request. Debian's
# libfaiss is static, so it needs the BLAS and LAPACK at link time.
# bench/persist-compare (hnswlib only) times opening a saved index.
# hnswlib's headers carry no version: the output names the Debian package's.
HNSWLIB_VERSION := $(shell dpkg-query -W -f='$${Version}' libhnswlib-dev \
                     2>/dev/null)
bench-compare: bench/vecidx-compare $(PERSIST_COMPARE)
ifneq ($(COMPARE_SRC),)
bench/vecidx-compare: bench/compare.cpp $(BENCH_HDRS) vecidx.h libvecidx.a
	$(CXX) -O3 -march=native -std=c++17 -Wall -Wextra -I. -o $@ \
	    $(if $(HNSWLIB_VERSION),-DHNSWLIB_VERSION='"$(HNSWLIB_VERSION)"') \
	    bench/compare.cpp libvecidx.a -lfaiss -fopenmp -llapack -lblas \
	    $(LDFLAGS) $(LDLIBS)
bench/persist-compare: bench/persist-compare.cpp $(BENCH_HDRS) vecidx.h \
                       libvecidx.a
	$(CXX) -O3 -march=native -std=c++17 -I. -o $@ \
	    bench/persist-compare.cpp libvecidx.a -pthread -lm $(LDFLAGS)
else
bench/vecidx-compare:
	@echo "bench/compare.cpp does not exist"; exit 1
endif

# Old-vs-new A/B: the library of git revision OLD and that of the working
# tree (or of revision NEW) in one program, bench/vecidx-ab, their search
# passes alternating. Always rebuilt, as OLD and the tree change.
OLD ?=
NEW ?=
bench-ab:
	@test -n "$(OLD)" || \
	    { echo "usage: make bench-ab OLD=<git-rev> [NEW=<git-rev>]"; exit 1; }
	CC="$(CC)" CFLAGS="$(filter-out -Werror,$(CFLAGS))" \
	    PROG_CFLAGS="$(CFLAGS)" LDLIBS="$(LDLIBS)" \
	    sh bench/ab-build.sh "$(OLD)" "$(NEW)"

# ---- Test programs -----------------------------------------------------------
# $(call vx_test_builds,SUFFIX,COMPILER-VARIABLE,FLAGS-VARIABLE) defines the
# rules for every test program built with that compiler and flags, named
# with SUFFIX (tests/vecidx_test-asan ...).
define vx_test_builds
tests/vecidx_test$(1): $$(TEST_SRCS) $$(TEST_HDRS) vecidx.c vecidx.h
	$$($(2)) $$($(3)) -I. -o $$@ $$(TEST_SRCS) $$(LDFLAGS) $$(LDLIBS)

tests/core/core_test$(1): tests/core/core_test.c vecidx.c vecidx.h
	$$($(2)) $$($(3)) -I. -o $$@ tests/core/core_test.c $$(LDFLAGS) $$(LDLIBS)

tests/crash/crash_test$(1): tests/crash/crash_test.c vecidx.c vecidx.h
	$$($(2)) $$($(3)) -I. -o $$@ tests/crash/crash_test.c $$(LDFLAGS) $$(LDLIBS)

tests/portab/portab$(1): tests/portab/portab.c vecidx.c vecidx.h
	$$($(2)) $$($(3)) -I. -o $$@ tests/portab/portab.c vecidx.c \
	    $$(LDFLAGS) $$(LDLIBS)
endef
$(eval $(call vx_test_builds,,CC,TEST_CFLAGS))
$(eval $(call vx_test_builds,-asan,SAN_CC,ASAN_CFLAGS))
$(eval $(call vx_test_builds,-tsan,TSAN_CC,TSAN_CFLAGS))
$(eval $(call vx_test_builds,-nosimd,CC,NOSIMD_CFLAGS))
$(eval $(call vx_test_builds,-m32,CC,M32_CFLAGS))
$(eval $(call vx_test_builds,-aarch64,CROSS_AARCH64,CROSS_CFLAGS))
$(eval $(call vx_test_builds,-armhf,CROSS_ARMHF,CROSS_CFLAGS))
$(eval $(call vx_test_builds,-armhf-neon,CROSS_ARMHF,CROSS_NEON_CFLAGS))

# The C++ test links the static library; it shows vecidx.h compiles as C++.
tests/vecidx_test_cxx: tests/test_cxx.cpp vecidx.h libvecidx.a
	$(CXX) -std=c++11 -O2 $(CXXWARNINGS) -I. -o $@ tests/test_cxx.cpp \
	    libvecidx.a $(LDFLAGS) $(LDLIBS)

# Replays the inputs kept in fuzz/regress without libFuzzer.
fuzz/fuzz_open-replay: fuzz/fuzz_open.c vecidx.c vecidx.h
	$(CC) $(TEST_CFLAGS) -DVX_FUZZ_MAIN -I. -o $@ fuzz/fuzz_open.c vecidx.c \
	    $(LDFLAGS) $(LDLIBS)

# The API-sequence fuzzer without libFuzzer: replays files and directories.
fuzz/fuzz_api-replay: fuzz/fuzz_api.c vecidx.c vecidx.h
	$(CC) $(TEST_CFLAGS) -DVX_FUZZ_MAIN -I. -o $@ fuzz/fuzz_api.c vecidx.c \
	    $(LDFLAGS) $(LDLIBS)

fuzz/fuzz_api-replay-asan: fuzz/fuzz_api.c vecidx.c vecidx.h
	$(SAN_CC) $(ASAN_CFLAGS) -DVX_FUZZ_MAIN -I. -o $@ fuzz/fuzz_api.c \
	    vecidx.c $(LDFLAGS) $(LDLIBS)

# Written once per build of the library; every check reads the same files.
$(PORTAB_DATA)/answers.txt: tests/portab/portab
	./tests/portab/portab write $(PORTAB_DATA)

# ---- Running the tests -------------------------------------------------------
# $(call vx_run,PROGRAMS,SUFFIX,COMMAND-PREFIX,ARGUMENTS) runs each program
# (with SUFFIX appended) one after the other, even under make -j, prints
# each one's result and time, and fails at the end if any of them failed.
vx_run = @fail=0; for t in $(1); do \
	    echo "== $(strip $(3) ./$$t$(2) $(4))"; s=$$(date +%s); \
	    if $(3) ./$$t$(2) $(4); then r=ok; else r=FAILED; fail=1; fi; \
	    echo "== $$r: $$t$(2) ($$(( $$(date +%s) - s )) s)"; \
	done; test $$fail = 0

# $(call vx_step,COMMAND) runs one shell command as vx_run runs a program:
# it prints the command, then its result and time, and fails if it failed.
vx_step = @echo "== $(strip $(1))"; s=$$(date +%s); \
	if $(1); then r=ok; else r=FAILED; fi; \
	echo "== $$r: $(strip $(1)) ($$(( $$(date +%s) - s )) s)"; \
	test $$r = ok

# The Python binding and examples find the library through VECIDX_LIBRARY
# and the package through PYTHONPATH. They run when $(PYTHON) has pytest
# and numpy, and are skipped otherwise -- unless REQUIRE_PYTHON is set (as
# .ci/run does), which makes their absence an error.
PY_ENV = VECIDX_LIBRARY=$(CURDIR)/libvecidx.so PYTHONPATH=python
REQUIRE_PYTHON ?=
vx_have_python = $(PYTHON) -c 'import pytest, numpy' 2>/dev/null || \
	{ echo "$(1) skipped: $(PYTHON) lacks pytest or numpy"; \
	  test -z "$(REQUIRE_PYTHON)"; exit; }

# The C test programs, the C++ header test if tests/test_cxx.cpp exists, the
# fuzz regression inputs if fuzz/regress exists, the command-line tool's
# test, the examples (examples-run), then the Python binding tests if
# python/tests exists. In two halves (VT_HALF, below), the core and crash
# tests in the first: on a 2-core Zen 3 they took 86 and 94 s side by
# side, and CI's build-and-test step 142 s instead of 215 s. A failure in
# the first half stops a serial make before the second, unless -k.
test: test-half1 test-half2
test-half1: $(TEST_PROGS)
	@test -n "$(TEST_PROGS)" || { echo "no test programs found"; exit 1; }
	$(call vx_run,$(MAIN_TEST),,,$(VT_HALF))
	$(call vx_run,$(filter-out $(MAIN_TEST),$(TEST_PROGS)))
test-half2: $(MAIN_TEST) $(TEST_CXX_BIN) $(FUZZ_REPLAY) $(API_REPLAY) $(CLI) \
      $(EXAMPLES) $(if $(PY_TESTS)$(PY_EXAMPLES),libvecidx.so) $(PORTAB_FILES) \
      $(SQLITE_EXT)
	$(call vx_run,$(MAIN_TEST),,,$(VT_REST))
	$(call vx_run,$(TEST_CXX_BIN))
ifneq ($(PORTAB),)
	$(call vx_run,$(PORTAB),,,check $(PORTAB_DATA))
endif
ifneq ($(FUZZ_REPLAY),)
	./fuzz/fuzz_open-replay $(FUZZ_REGRESS) >/dev/null
endif
ifneq ($(API_REPLAY),)
	$(call vx_run,$(API_REPLAY),,,fuzz/api-seeds $(wildcard fuzz/api-regress))
endif
ifneq ($(CLI_TEST),)
	$(call vx_step,sh $(CLI_TEST) $(CLI))
endif
	@$(MAKE) --no-print-directory examples-run
ifneq ($(SQLITE_EXT),)
	@$(vx_have_sqlite); $(MAKE) --no-print-directory vx-sqlite-test
else
	@echo "sqlite tests skipped: no sqlite3ext.h (apt-get install libsqlite3-dev)"
endif
ifneq ($(PY_TESTS),)
	@$(call vx_have_python,python tests); \
	$(MAKE) --no-print-directory vx-pytest
else
	@test -z "$(REQUIRE_PYTHON)" || \
	    { echo "REQUIRE_PYTHON is set but python/tests does not exist"; exit 1; }
endif

.PHONY: vx-pytest
vx-pytest: libvecidx.so
	$(call vx_step,$(PY_ENV) $(PYTHON) -m pytest -q python/tests)

# A newline: $(foreach) over vx_step gives one recipe line per item.
define vx_nl


endef

# Every example: the C ones (recommend in its quick mode), then the Python
# ones when $(PYTHON) can run them.
EXAMPLE_ARGS_recommend = --quick
examples-run: $(EXAMPLES) $(if $(PY_EXAMPLES),libvecidx.so) \
              $(if $(SQLITE_EXAMPLES),$(SQLITE_EXT))
	$(foreach e,$(EXAMPLES),\
	    $(call vx_step,./$(e) $(EXAMPLE_ARGS_$(notdir $(e))))$(vx_nl))
ifneq ($(SQLITE_EXAMPLES),)
ifneq ($(SQLITE_EXT),)
	@$(vx_have_sqlite); $(MAKE) --no-print-directory vx-sqlite-examples
else
	@echo "sqlite examples skipped: no sqlite3ext.h (apt-get install libsqlite3-dev)"
endif
endif
ifneq ($(PY_EXAMPLES),)
	@$(call vx_have_python,python examples); \
	$(MAKE) --no-print-directory vx-py-examples
endif

.PHONY: vx-sqlite-examples
vx-sqlite-examples: $(SQLITE_EXT)
	$(foreach e,$(SQLITE_EXAMPLES),$(call vx_step,VECIDX_SQLITE_EXT=$(CURDIR)/$(SQLITE_EXT) $(PYTHON) $(e))$(vx_nl))

.PHONY: vx-py-examples
vx-py-examples: libvecidx.so
	$(foreach e,$(PY_EXAMPLES),$(call vx_step,$(PY_ENV) $(PYTHON) $(e))$(vx_nl))

ASAN_ENV = ASAN_OPTIONS=detect_leaks=1 \
           UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
TSAN_ENV = TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1

# core_test's HNSW churn test, most of its time under ASan, is left out
# here: it is the 20k-vector churn scenario of vecidx_test's hnsw_churn
# one round shorter, and hnsw_churn, hnsw_churn_cos, hnsw_churn_ip,
# hnsw_removals_ip and storage_churn run under ASan. `make test` and
# test-nosimd run it.
SAN_CORE_TESTS := -hnsw_churn

# test, sanitize and test-nosimd run vecidx_test as two processes that make -j
# runs side by side (add -O, as .ci/run does, to keep their output apart):
# the tests whose names contain a word of VT_HALF, and the rest (VT_REST:
# the same words as -WORDs), so that together they run every test once; VT_HALF
# must not be empty, or both would run them all. Under ASan vecidx_test
# took 531 s of a 28-minute CI run in one process on a 2-core Zen 3; with
# these words its first half took 326 s, its second half and the other
# sanitized programs 325 s.
VT_HALF := filter_ alloc_
VT_REST := $(addprefix -,$(VT_HALF))
SAN_PREREQS := $(addsuffix -asan,$(TEST_PROGS) $(API_REPLAY)) \
               $(if $(CLI_TEST),tools/vecidx-asan)
sanitize: sanitize-half1 sanitize-half2
sanitize-half1: $(addsuffix -asan,$(MAIN_TEST))
	$(call vx_run,$(MAIN_TEST),-asan,$(ASAN_ENV) $(NORAND),$(VT_HALF))
sanitize-half2: $(SAN_PREREQS)
	$(call vx_run,$(MAIN_TEST),-asan,$(ASAN_ENV) $(NORAND),$(VT_REST))
	$(call vx_run,$(filter-out $(CORE_TEST) $(MAIN_TEST),$(TEST_PROGS)),-asan,$(ASAN_ENV) $(NORAND))
	$(call vx_run,$(CORE_TEST),-asan,$(ASAN_ENV) $(NORAND),$(SAN_CORE_TESTS))
ifneq ($(API_REPLAY),)
	$(call vx_run,$(API_REPLAY),-asan,$(ASAN_ENV) $(NORAND),fuzz/api-seeds $(wildcard fuzz/api-regress))
endif
ifneq ($(CLI_TEST),)
	$(call vx_step,$(ASAN_ENV) $(NORAND) sh $(CLI_TEST) tools/vecidx-asan)
endif

# The recommend example too: searches on several threads while products are
# added and removed, through the public API as an application does it.
RECOMMEND_TSAN := $(if $(wildcard examples/recommend.c),examples/recommend-tsan)
examples/recommend-tsan: examples/recommend.c vecidx.c vecidx.h
	$(TSAN_CC) $(TSAN_CFLAGS) -I. -o $@ examples/recommend.c vecidx.c \
	    $(LDFLAGS) $(LDLIBS)

# Two jobs, for make -j: vecidx_test's concurrency tests took 100 s of a
# 2-core Zen 3, the rest 33 s.
tsan: tsan-main tsan-rest
tsan-main: $(addsuffix -tsan,$(MAIN_TEST))
	$(call vx_run,$(MAIN_TEST),-tsan,$(TSAN_ENV) $(NORAND),$(TSAN_FILTER))
tsan-rest: $(addsuffix -tsan,$(filter-out $(MAIN_TEST),$(NOCRASH_PROGS))) \
           $(RECOMMEND_TSAN)
	$(call vx_run,$(filter-out $(MAIN_TEST),$(NOCRASH_PROGS)),-tsan,$(TSAN_ENV) $(NORAND),$(TSAN_FILTER))
ifneq ($(RECOMMEND_TSAN),)
	$(call vx_step,$(TSAN_ENV) $(NORAND) ./$(RECOMMEND_TSAN) --quick --threads 2)
endif

# Minutes, not in CI: the file-backed stress tests of test_concurrency.c
# (readers, a writer, checkpoints, saves, read-only opens) under TSan,
# every configuration (HNSW l2, cosine, ip and int8; flat float32 and
# half precision; IVF-PQ) for SOAK_SECONDS, in as many fresh runs as fit,
# each ending with vecidx_check and a comparison with the writer's model.
SOAK_SECONDS ?= 40
soak: tests/vecidx_test-tsan
	$(call vx_run,tests/vecidx_test,-tsan,VTEST_SOAK_SECONDS=$(SOAK_SECONDS) $(TSAN_ENV) $(NORAND),concurrency_file_stress)

NOSIMD_PREREQS := $(addsuffix -nosimd,$(TEST_PROGS) $(PORTAB)) $(PORTAB_FILES)
test-nosimd: test-nosimd-half1 test-nosimd-half2
test-nosimd-half1: $(addsuffix -nosimd,$(MAIN_TEST))
	$(call vx_run,$(MAIN_TEST),-nosimd,,$(VT_HALF))
test-nosimd-half2: $(NOSIMD_PREREQS)
	$(call vx_run,$(MAIN_TEST),-nosimd,,$(VT_REST))
	$(call vx_run,$(filter-out $(MAIN_TEST),$(TEST_PROGS)),-nosimd)
ifneq ($(PORTAB),)
	$(call vx_run,$(PORTAB),-nosimd,,check $(PORTAB_DATA))
endif

# The probe includes system headers: with gcc-12-multilib left behind by
# a cross compiler's install (which removes gcc-multilib), a bare program
# links but <errno.h> is missing, and the build failed instead of skipping.
test-m32:
	@if printf '%s\n' '#include <errno.h>' '#include <pthread.h>' \
	    'int main(void){return errno;}' | \
	    $(CC) -m32 -x c - -o /dev/null -pthread >/dev/null 2>&1; then \
	    $(MAKE) --no-print-directory $(addsuffix -m32,$(TEST_PROGS)) && \
	    fail=0 && for t in $(TEST_PROGS); do \
	        echo "== ./$$t-m32"; ./$$t-m32 || fail=1; \
	    done && test $$fail = 0; \
	else \
	    echo "test-m32 skipped: $(CC) cannot build -m32 programs" \
	         "(apt-get install gcc-multilib)"; \
	fi

# ---- cross-test: what runs under qemu-user -----------------------------------
# qemu-user runs ARM code ten to twenty times slower than native code, so
# the three ARM runs take the tests listed below, not the whole suite (which
# took 5 to 7.5 minutes per target), and armhf-neon only the part of them
# that uses the kernels (CROSS_TESTS_NEON32). The list is what can come out
# differently on ARM:
#   - the kernels: every NEON (aarch64, armhf-neon) or scalar (armhf) kernel
#     family against the scalar reference (kernels_*, core_test's kernels);
#   - files: the portability check (tests/portab: files of every kind and
#     storage written here open and answer the same there), and files
#     written, logged, replayed, copied and damaged there
#     (storage_log_replay, stats_log_and_checkpoint, file_private_copy,
#     ivfpq_corrupt_file, core_test's file_roundtrip and file_corruption,
#     the crash test's header rewrite);
#   - 32-bit size_t and pointers: argument and range checks (errors_*,
#     flat_reserve, flat_extreme_keys, flat_k_edge_cases, hnsw_bad_params,
#     ivfpq_params, ivfpq_search_edges, storage_refused, core_test's
#     bad_input, stats_size_contract), memory accounting, whose sizes follow
#     the pointer width (alloc_accounting, stats_memory_parts), 64-bit
#     counters and histograms (stats_counters_*, stats_histogram,
#     stats_list_median), and on the two 32-bit runs the bitmap bounds of
#     filters against 64-bit keys (filter_empty_and_bounds) and 64-byte
#     record alignment where malloc aligns to 8 (store_line_aligned_records);
#   - every index kind and storage at least once: flat (flat_*, filter_flat),
#     HNSW (hnsw_*, core_test), IVF-PQ (ivfpq_*), float32 throughout, half,
#     int8 and binary codes in tests/portab, int8 also in storage_log_replay.
# Left to the native runs, which run every test (make test, sanitize,
# test-nosimd; the concurrency tests also tsan): logic that does not depend
# on the platform and takes minutes under qemu -- recall sweeps
# (storage_recall, hnsw_*recall*, ivfpq_recall_*), recall estimates and
# tuning (recall_*), churn, removal and repair scenarios (hnsw_churn*,
# hnsw_removals_ip, stats_buried_and_repairs, core_test's hnsw_churn),
# allocation-failure sweeps, the concurrency and file stress tests
# (qemu-user runs ARM threads on the host's memory model, so it could not
# find an ARM ordering bug anyway), HNSW and IVF-PQ determinism and
# parallel builds, the filtered-search planning tests, the large-store
# tests (store_huge_blocks, store_kept_vectors_apart) and IVF-PQ
# persistence (their file layouts are in tests/portab), IVF-PQ training
# variants, snapshots, and the crash test's loops of power cuts, I/O
# faults and SIGKILLs.
# The test programs select by name substring: vecidx_test runs the tests
# whose name contains a word of its list, core_test those whose name
# contains none of its -WORDs, crash_test the groups named; a selection of
# nothing fails. A new test of vecidx_test runs under qemu only when added
# here.
CROSS_TESTS := library_version_and_simd strerror_codes kernels errors_ \
    flat_exact flat_k_edge_cases flat_ties_broken_by_key flat_extreme_keys \
    flat_filter flat_deletes flat_upsert flat_cosine_stores flat_reserve \
    flat_determinism batch_add batch_query_anywhere alloc_accounting \
    filter_flat \
    concurrency_flat_search_while_writing \
    hnsw_bad_params hnsw_remove_then_search hnsw_upsert_replaces \
    ivfpq_params ivfpq_few_distinct_points ivfpq_corrupt_file \
    ivfpq_search_edges storage_refused storage_log_replay file_private_copy \
    stats_histogram stats_list_median stats_counters stats_memory_parts \
    stats_log_and_checkpoint stats_size_contract file_damage_readers \
    file_damage_log_readers store_i8_query_error
CROSS_TESTS_32 := $(CROSS_TESTS) filter_empty_and_bounds \
    store_line_aligned_records
# 32-bit ARM with NEON differs from plain armhf in its kernels (the source
# uses NEON nowhere else), and in what gcc vectorizes with it elsewhere at
# -O2 (stores of headers and records in the file, log and stats code). So
# it runs the kernel tests; the tests that use each NEON kernel inside a
# search (flat scans single and batched, HNSW, IVF-PQ's l2 and dot; its
# panels, codes and nearest column are scalar on ARM), with half, int8 and
# binary codes in batch_query_anywhere and tests/portab, int8 logged and
# replayed; and the cheap file tests: a log and checkpoint, a private
# copy, a damaged log. The rest of the 32-bit logic is plain armhf's: with
# the whole CROSS_TESTS_32 list this run took 124 s in CI.
CROSS_TESTS_NEON32 := library_version_and_simd kernels flat_exact \
    filter_flat batch_query_anywhere hnsw_remove_then_search \
    hnsw_upsert_replaces ivfpq_few_distinct_points ivfpq_search_edges \
    storage_log_replay store_i8_query_error stats_log_and_checkpoint \
    file_private_copy file_damage_log_readers
CROSS_CORE_TESTS := -hnsw_churn -hnsw_recall
CROSS_CRASH_TESTS := header
# Independent runs, so make -j runs them side by side (add -O to keep
# each one's output together). The crash test does not run with 32-bit
# NEON: plain armhf runs it on 32 bits, and it uses no kernel.
# On a 2-core Zen 3 plain armhf took 131 s, about as long as the other
# two together.
cross-test: cross-test-armhf cross-test-armhf-neon cross-test-aarch64
cross-test-aarch64: $(addsuffix -aarch64,$(TEST_PROGS) $(PORTAB)) $(PORTAB_FILES)
	$(call vx_run,$(PORTAB),-aarch64,$(QEMU_AARCH64),check $(PORTAB_DATA))
	$(call vx_run,$(MAIN_TEST),-aarch64,$(QEMU_AARCH64),$(CROSS_TESTS))
	$(call vx_run,$(CORE_TEST),-aarch64,$(QEMU_AARCH64),$(CROSS_CORE_TESTS))
	$(call vx_run,$(CRASH_TEST),-aarch64,$(QEMU_AARCH64),$(CROSS_CRASH_TESTS))
cross-test-armhf: $(addsuffix -armhf,$(TEST_PROGS) $(PORTAB)) $(PORTAB_FILES)
	$(call vx_run,$(PORTAB),-armhf,$(QEMU_ARM),check $(PORTAB_DATA))
	$(call vx_run,$(MAIN_TEST),-armhf,$(QEMU_ARM),$(CROSS_TESTS_32))
	$(call vx_run,$(CORE_TEST),-armhf,$(QEMU_ARM),$(CROSS_CORE_TESTS))
	$(call vx_run,$(CRASH_TEST),-armhf,$(QEMU_ARM),$(CROSS_CRASH_TESTS))
cross-test-armhf-neon: $(addsuffix -armhf-neon,$(NOCRASH_PROGS) $(PORTAB)) \
                       $(PORTAB_FILES)
	$(call vx_run,$(PORTAB),-armhf-neon,$(QEMU_ARM),check $(PORTAB_DATA))
	$(call vx_run,$(MAIN_TEST),-armhf-neon,$(QEMU_ARM),$(CROSS_TESTS_NEON32))
	$(call vx_run,$(CORE_TEST),-armhf-neon,$(QEMU_ARM),$(CROSS_CORE_TESTS))

crash-soak: tests/crash/crash_test
	CRASH_TRIALS=$(CRASH_TRIALS) ./tests/crash/crash_test

# ---- Fuzzing -----------------------------------------------------------------
# Needs clang with libFuzzer (Debian: libclang-rt-14-dev). The seed corpus
# is generated into fuzz/corpus, never committed; inputs worth keeping go
# to fuzz/regress, which `make test` replays.
# fuzz_api starts from the committed seeds, fuzz/api-seeds (rewritten by
# `fuzz/fuzz_api-replay --make-seeds fuzz/api-seeds`); what it finds new
# goes to fuzz/api-corpus, never committed; fuzz/api-regress joins the
# seeds. Its files go to a directory under TMPDIR: on tmpfs (the default
# here, when /dev/shm exists) the fsyncs of every write cost nothing.
FUZZ_TMPDIR ?= $(if $(wildcard /dev/shm),/dev/shm,/tmp)
fuzz/fuzz_open: fuzz/fuzz_open.c vecidx.c vecidx.h
	$(FUZZ_CC) -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -I. \
	    -o $@ fuzz/fuzz_open.c vecidx.c $(LDLIBS)

fuzz/fuzz_api: fuzz/fuzz_api.c vecidx.c vecidx.h
	$(FUZZ_CC) -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -I. \
	    -o $@ fuzz/fuzz_api.c vecidx.c $(LDLIBS)

fuzz/make_seeds: fuzz/make_seeds.c vecidx.h libvecidx.a
	$(CC) $(CFLAGS) -I. -o $@ fuzz/make_seeds.c libvecidx.a $(LDFLAGS) $(LDLIBS)

fuzz: fuzz/fuzz_open fuzz/make_seeds $(if $(wildcard fuzz/fuzz_api.c),fuzz/fuzz_api)
	mkdir -p fuzz/corpus
	./fuzz/make_seeds fuzz/corpus
	$(NORAND) ./fuzz/fuzz_open -max_total_time=$(FUZZ_TIME) fuzz/corpus \
	    $(wildcard fuzz/regress)
ifneq ($(wildcard fuzz/fuzz_api.c),)
	mkdir -p fuzz/api-corpus
	TMPDIR=$(FUZZ_TMPDIR) $(NORAND) ./fuzz/fuzz_api \
	    -max_total_time=$(FUZZ_TIME) -max_len=4096 -timeout=20 \
	    fuzz/api-corpus $(wildcard fuzz/api-seeds fuzz/api-regress)
endif

# ---- Install -----------------------------------------------------------------
# vecidx.pc is written at install time so it always names this PREFIX.
install: libvecidx.a libvecidx.so vecidx.pc.in $(CLI)
	$(INSTALL) -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR) \
	    $(DESTDIR)$(PKGCONFIGDIR) $(if $(CLI),$(DESTDIR)$(BINDIR))
	$(INSTALL) -m 644 vecidx.h $(DESTDIR)$(INCLUDEDIR)/vecidx.h
	$(INSTALL) -m 644 libvecidx.a $(DESTDIR)$(LIBDIR)/libvecidx.a
	$(INSTALL) -m 755 libvecidx.so $(DESTDIR)$(LIBDIR)/libvecidx.so.$(VERSION)
	ln -sf libvecidx.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libvecidx.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    vecidx.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/vecidx.pc
	chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/vecidx.pc
ifneq ($(CLI),)
	$(INSTALL) -m 755 $(CLI) $(DESTDIR)$(BINDIR)/vecidx
endif

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/vecidx.h $(DESTDIR)$(LIBDIR)/libvecidx.a \
	    $(DESTDIR)$(LIBDIR)/libvecidx.so.$(VERSION) \
	    $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/libvecidx.so \
	    $(DESTDIR)$(PKGCONFIGDIR)/vecidx.pc $(DESTDIR)$(BINDIR)/vecidx

# ---- Formatting --------------------------------------------------------------
format-check:
	$(CLANG_FORMAT) --dry-run -Werror $(FORMAT_SRCS)

format:
	$(CLANG_FORMAT) -i $(FORMAT_SRCS)

# ---- Cleaning ----------------------------------------------------------------
clean:
	rm -f vecidx.o libvecidx.a libvecidx.so $(EXAMPLES) $(RECOMMEND_TSAN) \
	    tools/vecidx tools/vecidx-asan \
	    $(BENCH) bench/vecidx-compare bench/persist-compare bench/vecidx-ab \
	    tests/vecidx_test tests/vecidx_test-* tests/vecidx_test_cxx \
	    tests/core/core_test tests/core/core_test-* \
	    tests/crash/crash_test tests/crash/crash_test-* \
	    tests/portab/portab tests/portab/portab-* \
	    fuzz/fuzz_open fuzz/fuzz_open-replay fuzz/make_seeds \
	    fuzz/fuzz_api fuzz/fuzz_api-replay fuzz/fuzz_api-replay-asan \
	    sqlite/vecidx_sqlite.so \
	    bench/sqlite/sql_overhead
	rm -rf fuzz/corpus fuzz/api-corpus bench/ab-build $(PORTAB_DATA) sqlite/asan
