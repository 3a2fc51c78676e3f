"""The review dashboard served by the API server under /dashboard, behind the same sign-in: a real uvicorn server,
driven by headless Chromium. No cookie: the sign-in page; a wrong password: refused there; an admin: the dashboard
with the users' sessions; a plain user: 403. The dashboard's own WebSocket refuses a connection without the cookie."""
import httpx, pytest
from websockets.sync.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from dataops_lab.client import Client
from conftest import write_ini
from apiserver import APIServer
from test_api import add_users, PW
from test_dashboard import _browser, _local_only

def test_dashboard_behind_the_api_sign_in(tmp_path):
    from playwright.sync_api import sync_playwright, expect
    ini = write_ini(tmp_path, 'embedded')
    add_users(ini, ('root', 'admin'), ('alice', 'user'))
    with APIServer(ini, dashboard=True) as srv:
        sid = Client(srv.url, 'alice', PW).create_session()['session_id']
        # no cookie: every /dashboard path sends the browser to the sign-in page, and Bokeh's WebSocket is closed
        r = httpx.get(f"{srv.url}/dashboard", follow_redirects=False)
        assert (r.status_code, r.headers['location']) == (303, '/dashboard/login')
        with pytest.raises((ConnectionClosed, InvalidStatus)):
            with connect(srv.url.replace('http', 'ws') + '/dashboard/ws') as ws: ws.recv(timeout=10)
        outside = []
        with sync_playwright() as p:
            browser = _browser(p)
            try:
                page = browser.new_page()
                _local_only(page, outside)
                page.goto(f"{srv.url}/dashboard", timeout=60_000)
                expect(page).to_have_url(f"{srv.url}/dashboard/login")
                def sign_in(user, pw):
                    page.get_by_label('User').fill(user); page.get_by_label('Password').fill(pw)
                    with page.expect_navigation(): page.get_by_role('button', name='Sign in').click()
                sign_in('root', 'not the password')
                expect(page.get_by_text('Sign in')).to_be_visible()
                assert 'dataops_dashboard' not in {c['name'] for c in page.context.cookies()}
                sign_in('root', PW)
                expect(page).to_have_url(f"{srv.url}/dashboard", timeout=30_000)
                cookie = next(c for c in page.context.cookies() if c['name'] == 'dataops_dashboard')
                assert (cookie['httpOnly'], cookie['sameSite'], cookie['path']) == (True, 'Strict', '/dashboard')
                expect(page.locator('.sessions-table .tabulator').get_by_text(sid)).to_be_visible(timeout=60_000)
                # a plain user signs in but may not view the dashboard
                page.context.clear_cookies()
                page.goto(f"{srv.url}/dashboard/login")
                sign_in('alice', PW)
                expect(page.get_by_text("role 'user' may not dashboard view")).to_be_visible(timeout=30_000)
            finally:
                browser.close()
        assert not outside, outside
