# Skiff build. `make run` and `make test` are all a new machine needs (see README.md).
#
# Two build flavours share one source list:
#   build/rel   optimised, what `make run` starts
#   build/asan  AddressSanitizer + UndefinedBehaviorSanitizer, what the tests run
# Every folder under src/ is a component; its .c files go into libskiff.a, except main.c,
# which makes the component a program (daemon -> skiffd, router -> skiff-router, cli -> skiff,
# shim -> skiff-shim, init -> skiff-init, brokers -> skiff-brokers).

PKGS     := libuv jansson sqlite3 libcurl yaml-0.1 libarchive libsodium libcrypto libseccomp libnats libpq libnghttp2 openssl
LLHTTP   := /usr/share/llhttp
CC       ?= cc

BASE_CFLAGS := -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wvla \
               -D_GNU_SOURCE -Isrc -I/usr/share/include/llhttp -g -MMD -MP
REL_CFLAGS  := -O2
ASAN_CFLAGS := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
               -DSKIFF_TEST_HOOKS
PKG_CFLAGS   = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS     = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lcap -lpthread -lm

LIB_SRCS  := $(filter-out %/main.c,$(wildcard src/*/*.c))
MAIN_SRCS := src/daemon/main.c src/router/main.c src/cli/main.c src/shim/main.c src/init/main.c src/brokers/main.c
PROGRAMS  := skiffd skiff-router skiff skiff-shim skiff-init skiff-brokers
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)

BUILD ?= build
REL  := $(BUILD)/rel
ASAN := $(BUILD)/asan
FUZZ := $(BUILD)/fuzz
export BUILD

.PHONY: all deps build asan run test unit e2e fuzz fuzz-build bench format clean examples
all: build

# What the build needs is installed while this file is read, before make looks for any
# source: a rule whose source is not on disk yet (llhttp's, on a new machine) would be passed
# over, and the build stop with "No rule to make target". Only clean, format and deps skip it.
ifneq ($(MAKECMDGOALS),)
ifeq ($(filter-out clean format deps,$(MAKECMDGOALS)),)
SKIP_DEPS := 1
endif
endif
ifndef SKIP_DEPS
ifneq ($(shell bash scripts/deps.sh >&2 && echo ok),ok)
$(error could not install what the build needs (scripts/deps.sh, its output is above))
endif
endif

deps:
	@bash scripts/deps.sh

build: $(addprefix $(REL)/,$(PROGRAMS))
asan:  $(addprefix $(ASAN)/,$(PROGRAMS)) $(patsubst tests/unit/%.c,$(ASAN)/tests/%,$(UNIT_SRCS))

# ---- objects, per flavour -------------------------------------------------------------
# $(1) folder, $(2) flags, $(3) compiler
define flavour
$(1)/obj/%.o: src/%.c
	@mkdir -p $$(@D)
	$(3) $$(BASE_CFLAGS) $(2) $$(PKG_CFLAGS) -c $$< -o $$@

$(1)/obj/llhttp/%.o: $(LLHTTP)/%.c
	@mkdir -p $$(@D)
	$(3) -O2 -g -I/usr/share/include/llhttp $(2) -w -c $$< -o $$@

$(1)/libskiff.a: $(patsubst src/%.c,$(1)/obj/%.o,$(LIB_SRCS)) $(1)/obj/llhttp/llhttp.o $(1)/obj/llhttp/api.o $(1)/obj/llhttp/http.o
	@rm -f $$@
	ar rcs $$@ $$^

$(1)/skiffd: $(1)/obj/daemon/main.o $(1)/libskiff.a
	$$(CC) $(2) -o $$@ $$^ $$(PKG_LIBS)
$(1)/skiff-router: $(1)/obj/router/main.o $(1)/libskiff.a
	$$(CC) $(2) -o $$@ $$^ $$(PKG_LIBS)
$(1)/skiff: $(1)/obj/cli/main.o $(1)/libskiff.a
	$$(CC) $(2) -o $$@ $$^ $$(PKG_LIBS)
$(1)/skiff-shim: $(1)/obj/shim/main.o $(1)/libskiff.a
	$$(CC) $(2) -o $$@ $$^ $$(PKG_LIBS)
$(1)/skiff-brokers: $(1)/obj/brokers/main.o $(1)/libskiff.a
	$$(CC) $(2) -o $$@ $$^ $$(PKG_LIBS)
# on every container's start path: $(4) says how it is linked (see INIT_STATIC)
$(1)/skiff-init: $(1)/obj/init/main.o $(1)/libskiff.a
	$$(CC) $(2) -o $$@ $$^ $(4)

$(1)/tests/%: tests/unit/%.c $(1)/libskiff.a
	@mkdir -p $$(@D)
	$$(CC) $$(BASE_CFLAGS) $(2) $$(PKG_CFLAGS) -o $$@ $$< $(1)/libskiff.a $$(PKG_LIBS) -lcmocka
endef
# skiff-init runs at every container's start: linked statically, it loads no library and
# relocates nothing (~1 ms less from exec to work on a busy 2-core machine). Sanitizers
# cannot link statically: there, only the libraries it uses are loaded.
INIT_STATIC  := -static -ljansson -lseccomp -lcap -lpthread
INIT_DYNAMIC  = -Wl,--as-needed $(PKG_LIBS)
$(eval $(call flavour,$(REL),$(REL_CFLAGS),$(CC),$(INIT_STATIC)))
$(eval $(call flavour,$(ASAN),$(ASAN_CFLAGS),$(CC),$$(INIT_DYNAMIC)))
# libFuzzer: the whole library instrumented for coverage, so a fuzz target may drive any
# module (gcc already enforces the warnings; clang's own extra ones are not errors here).
FUZZ_CFLAGS := -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined -Wno-error
$(eval $(call flavour,$(FUZZ),$(FUZZ_CFLAGS),clang,$$(INIT_DYNAMIC)))

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- running ---------------------------------------------------------------------------
run: build
	@bash scripts/run.sh

# ---- tests -----------------------------------------------------------------------------
test: asan build fuzz-build
	@bash scripts/test.sh

unit: asan
	@bash scripts/test.sh unit

e2e: asan build
	@bash scripts/test.sh e2e

# libFuzzer targets (clang); `make fuzz` runs each for FUZZ_SECONDS.
FUZZ_SECONDS ?= 30
$(FUZZ)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ)/libskiff.a
	clang $(BASE_CFLAGS) -Wno-error -O1 -fsanitize=fuzzer,address,undefined $(PKG_CFLAGS) -o $@ $< $(FUZZ)/libskiff.a $(PKG_LIBS)
fuzz-build: $(patsubst tests/fuzz/%.c,$(FUZZ)/%,$(FUZZ_SRCS))
fuzz: fuzz-build
	@bash scripts/test.sh fuzz

# The binary example is pushed prebuilt: this compiles it; the Flask examples (python-flask and
# shop) are pushed with their dependencies in vendor/: this makes their wheels from Debian's
# python3-flask (no binaries live in git).
FLASK_WHEELS = Flask Werkzeug Jinja2 MarkupSafe itsdangerous click
examples:
	$(MAKE) -C examples/binary
	/usr/bin/python3 scripts/debian_wheels.py -d examples/python-flask/vendor $(FLASK_WHEELS)
	/usr/bin/python3 scripts/debian_wheels.py -d examples/shop/vendor $(FLASK_WHEELS)

bench: build
	@bash bench/run.sh

format:
	clang-format -i $$(git ls-files 'src/*.c' 'src/*.h' 'tests/*.c' 'sdk/*.c' 'sdk/*.h')

clean:
	rm -rf build
