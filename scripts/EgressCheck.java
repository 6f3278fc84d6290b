// The JDK's own HTTP client (java.net.http, what a Java service like Kestra can use) through the
// kestra-edge egress forward proxy. Run by scripts/egress-check.sh with the JDK trusting the test
// CA; single-file, run as `java EgressCheck.java PROXY_HOST PROXY_PORT HTTPS_URL HTTP_URL USER PASSWORD`.
//
// Seen with OpenJDK 17: the JDK does not send Proxy-Authorization on its first request; it gets
// the 407 and its Proxy-Authenticate challenge, asks the Authenticator, retries, and sends the
// credentials up front on later requests (one 407 in the proxy's debug log for two requests).
// It refuses Basic for HTTPS tunnels unless jdk.http.auth.tunneling.disabledSchemes is emptied
// (the script does). Micronaut's own client (Kestra's) sends the header up front.
import java.io.IOException;
import java.net.Authenticator;
import java.net.InetSocketAddress;
import java.net.PasswordAuthentication;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class EgressCheck {
    static int failed = 0;

    static HttpClient client(String host, int port, String user, String password) {
        HttpClient.Builder builder = HttpClient.newBuilder()
                .proxy(ProxySelector.of(new InetSocketAddress(host, port)))
                .connectTimeout(Duration.ofSeconds(5));
        if (user != null) {
            builder.authenticator(new Authenticator() {
                @Override
                protected PasswordAuthentication getPasswordAuthentication() {
                    if (getRequestorType() != RequestorType.PROXY) {
                        return null;
                    }
                    return new PasswordAuthentication(user, password.toCharArray());
                }
            });
        }
        return builder.build();
    }

    static void check(String name, boolean ok, String detail) {
        System.out.println((ok ? "PASS " : "FAIL ") + name + (detail.isEmpty() ? "" : ": " + detail));
        if (!ok) {
            failed++;
        }
    }

    static String outcome(HttpClient client, String url) {
        try {
            HttpResponse<String> response = client.send(
                    HttpRequest.newBuilder(URI.create(url)).timeout(Duration.ofSeconds(10)).build(),
                    HttpResponse.BodyHandlers.ofString());
            String body = response.body() == null ? "" : response.body().replace('\n', ' ');
            return response.statusCode() + " " + body;
        } catch (IOException | InterruptedException e) {
            return "error " + e.getClass().getSimpleName() + ": " + e.getMessage();
        }
    }

    public static void main(String[] args) {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        String https = args[2];
        String http = args[3];
        String user = args[4];
        String password = args[5];

        HttpClient good = client(host, port, user, password);
        String tunnelled = outcome(good, https);
        check("java: HTTPS through a CONNECT tunnel, certificate verified", tunnelled.startsWith("200 "), tunnelled);
        String plain = outcome(good, http);
        check("java: plain HTTP (absolute-form), no Proxy-Authorization at the destination",
                plain.startsWith("200 ") && !plain.toLowerCase().contains("proxy-authorization"),
                plain.length() > 160 ? plain.substring(0, 160) + "…" : plain);

        String none = outcome(client(host, port, null, null), https);
        check("java: no credentials refused (407)", none.contains("407"), none);
        String wrong = outcome(client(host, port, user, password + "-wrong"), https);
        check("java: wrong credentials refused", !wrong.startsWith("200 "), wrong);
        System.exit(failed == 0 ? 0 : 1);
    }
}
