"""The sign-in and sign-out pages in a real browser (headless Chromium): the form posts, and
the redirect that answers it reaches the application. Chrome holds that redirect to the page's
CSP `form-action` too, so a policy of `'self'` alone would strand every sign-in on a blocked
page — which requests-based tests cannot see."""

import secrets
import shutil
from urllib.parse import urlencode

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import HTTP_TIMEOUT_S, query_of, s256

REALM = "contoso"
CLIENT = "browser-app"


@pytest.fixture(scope="module")
def app(keypost, world):
    """An application on another origin: a local server that answers its callback."""
    import http.server
    import threading

    class Callback(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"application callback")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Callback)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    redirect = f"http://127.0.0.1:{server.server_address[1]}/cb"
    keypost.create_client(REALM, CLIENT, "--redirect-uri", redirect)
    yield redirect
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    binary = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not (binary and driver_path):
        pytest.fail("chromium and chromedriver are needed (scripts/test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(HTTP_TIMEOUT_S)
    yield driver
    driver.quit()


def arrives(browser, url):
    """Waits (a while) for the browser to land on `url`; where it is."""
    try:
        WebDriverWait(browser, 10).until(lambda b: b.current_url.startswith(url))
    except Exception:  # noqa: BLE001 - the assertion below says where it stopped
        pass
    return browser.current_url


def test_sign_in_and_sign_out_in_chromium(keypost, world, app, browser):
    verifier = secrets.token_urlsafe(48)
    params = dict(client_id=CLIENT, response_type="code", redirect_uri=app, scope="openid email",
                  state="b1", code_challenge=s256(verifier), code_challenge_method="S256")
    browser.get(keypost.endpoint(REALM, "authorization_endpoint") + "?" + urlencode(params))
    browser.find_element(By.NAME, "username").send_keys(world.alice.email)
    browser.find_element(By.NAME, "password").send_keys(world.alice.password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    landed = arrives(browser, app)
    assert landed.startswith(app), f"{landed}\n{browser.page_source[:500]}"
    q = query_of(landed)
    assert q.get("state") == "b1" and q.get("code"), browser.current_url
    assert "application callback" in browser.page_source

    tokens = requests.post(
        keypost.endpoint(REALM, "token_endpoint"),
        data={"grant_type": "authorization_code", "code": q["code"], "redirect_uri": app,
              "client_id": CLIENT, "code_verifier": verifier},
        timeout=HTTP_TIMEOUT_S,
    ).json()
    assert keypost.userinfo(REALM, tokens["access_token"]).status_code == 200

    # A bare sign-out link asks; confirming signs out and returns to the application.
    browser.get(keypost.endpoint(REALM, "end_session_endpoint") + "?" + urlencode(
        {"client_id": CLIENT, "post_logout_redirect_uri": app, "state": "b2"}))
    assert "Sign out?" in browser.page_source
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    landed = arrives(browser, app)
    assert landed.startswith(app) and query_of(landed).get("state") == "b2", landed
    assert keypost.userinfo(REALM, tokens["access_token"]).status_code == 401
