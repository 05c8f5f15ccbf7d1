"""``ddimkit app`` in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by
Selenium opens the page, presses Sample and waits for the grid. Skips, saying why, without them."""

import sys
from pathlib import Path

import pytest

import ddimkit as dk
from ddimkit import pretrained

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import app_screenshot as browser  # noqa: E402

pytest.importorskip("gradio", reason="the app needs Gradio: pip install -e '.[app]'")
pytest.importorskip("selenium", reason="the browser test needs Selenium: pip install -e '.[app]'")
if not all(browser.find_chromium()):
    pytest.skip("no Chromium and chromedriver (apt-get install -y chromium chromium-driver)", allow_module_level=True)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The shipped MNIST model when present (the app's default), else a tiny model trained for two steps."""
    if "mnist" in pretrained.names():
        return "pretrained:mnist"
    out = tmp_path_factory.mktemp("browser") / "run"
    dk.train(dk.TrainConfig(model="tiny", data="mnist-5k", out=str(out), steps=2, batch_size=8, sample_every=0,
                            num_sample_images=0, save_every=0, num_train_timesteps=100), progress=False)
    return str(out)


def test_the_page_samples_in_a_browser(ckpt):
    from ddimkit.app import launch

    demo = launch(ckpt, port=browser.free_port(), device="cpu", block=False)
    try:
        driver = browser.chromium_driver()
    except Exception as e:  # installed but unable to start here (e.g. a driver of another version)
        demo.close()
        pytest.skip(f"Chromium does not start: {str(e).splitlines()[0]}")
    try:
        img = browser.sample_in_page(driver, demo.local_url, timeout=90)
        size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
        assert min(size) >= 256  # the enlarged grid of samples, not an icon
        assert "network evaluations" in driver.page_source
        assert "Traceback" not in driver.page_source
    finally:
        driver.quit()
        demo.close()
