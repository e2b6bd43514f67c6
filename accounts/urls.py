from django.urls import path

from accounts import views

urlpatterns = [
    path("login", views.LoginPageView.as_view(), name="login"),
    path("logout", views.LogoutPageView.as_view(), name="logout"),
    path("signup", views.signup_page, name="signup"),
    path("settings", views.settings_page, name="settings"),
]
