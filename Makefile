# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv

.PHONY: setup demo test test-all lint clean-venv xl-start

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/lrl demo --out demo-out

test: setup
	$(VENV)/bin/python -m pytest -q

test-all: setup
	$(VENV)/bin/python -m pytest -q -m "slow or not slow"

lint: setup
	$(VENV)/bin/ruff check lrl tests bench

# Rebuild the shipped cross-lingual start lrl/assets/xl-tiny: CTC on espeak-ng speech in six languages
# (Swahili, the demo's language, is left out so the demo measures transfer to an unseen language).
XL_TEXT ?= ../shared/data/lm-text
XL_MINUTES ?= 10
xl-start: setup
	$(VENV)/bin/lrl train build-start lrl/assets/xl-tiny --work build/xl-start --minutes $(XL_MINUTES) \
	  --lang cy=$(XL_TEXT)/cy.txt --lang eu=$(XL_TEXT)/eu.txt --lang ga-IE=$(XL_TEXT)/ga-IE.txt \
	  --lang mt=$(XL_TEXT)/mt.txt --lang de=$(XL_TEXT)/de.txt --lang en=$(XL_TEXT)/en.txt
